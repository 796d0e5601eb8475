{{/* Names, labels and shared pieces of the model-gateway chart. */}}

{{- define "model-gateway.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name, kept to 50 characters so that suffixes such as "-head-svc" stay within 63. */}}
{{- define "model-gateway.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "model-gateway.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "model-gateway.labels" -}}
helm.sh/chart: {{ include "model-gateway.chart" . }}
{{ include "model-gateway.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: model-gateway
{{- end }}

{{- define "model-gateway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "model-gateway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels selecting the gateway pods only (not the Ray pods). */}}
{{- define "model-gateway.gatewaySelectorLabels" -}}
{{ include "model-gateway.selectorLabels" . }}
app.kubernetes.io/component: gateway
{{- end }}

{{- define "model-gateway.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "model-gateway.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "model-gateway.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The RayCluster's name; KubeRay names the head Service "<name>-head-svc". */}}
{{- define "model-gateway.rayClusterName" -}}
{{- printf "%s-ray" (include "model-gateway.fullname" .) }}
{{- end }}

{{- define "model-gateway.rayHeadService" -}}
{{- printf "%s-head-svc" (include "model-gateway.rayClusterName" .) }}
{{- end }}

{{/* GCS address of the head: the gateway's ray_address. */}}
{{- define "model-gateway.rayAddress" -}}
{{- printf "%s.%s.svc:6379" (include "model-gateway.rayHeadService" .) .Release.Namespace }}
{{- end }}

{{- define "model-gateway.adminSecretName" -}}
{{- default (printf "%s-admin" (include "model-gateway.fullname" .)) .Values.gateway.existingSecret }}
{{- end }}

{{- define "model-gateway.rayAuthSecretName" -}}
{{- default (printf "%s-ray-auth" (include "model-gateway.fullname" .)) .Values.ray.auth.existingSecret }}
{{- end }}

{{/*
The tenant file in the gateway container (the settings' tenants.file): the Secret's key, projected as
tenants.json into the folder tenants.mountPath.
*/}}
{{- define "model-gateway.tenantsFile" -}}
{{- printf "%s/tenants.json" (trimSuffix "/" .Values.tenants.mountPath) }}
{{- end }}

{{/* The traffic table's folder: its file's parent. */}}
{{- define "model-gateway.trafficDir" -}}
{{- dir .Values.trafficTable.path }}
{{- end }}

{{/*
Ray token authentication, the same on every Ray container and the gateway. The mode is always set:
left unset, `ray start --head` turns token mode on by itself when it finds a token file.
*/}}
{{- define "model-gateway.rayAuthEnv" -}}
{{- if .Values.ray.auth.enabled }}
- name: RAY_AUTH_MODE
  value: token
- name: RAY_AUTH_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "model-gateway.rayAuthSecretName" . }}
      key: auth_token
{{- else }}
- name: RAY_AUTH_MODE
  value: disabled
{{- end }}
{{- end }}

{{/*
Volumes every Ray pod mounts: the model repository (same path as on the gateway), the traffic
table's folder, /tmp and the shared memory of the object store. Called with (dict "root" $ "shm" size).
*/}}
{{- define "model-gateway.rayVolumes" -}}
{{- $root := .root }}
{{- if eq $root.Values.modelRepository.source "pvc" }}
- name: model-repository
  persistentVolumeClaim:
    claimName: {{ include "model-gateway.modelRepositoryClaim" $root }}
{{- end }}
- name: traffic-table
{{- include "model-gateway.trafficTableVolume" $root | nindent 2 }}
- name: tmp
  emptyDir: {}
- name: dshm
  emptyDir:
    medium: Memory
    sizeLimit: {{ .shm }}
{{- end }}

{{- define "model-gateway.rayVolumeMounts" -}}
{{- if eq .Values.modelRepository.source "pvc" }}
- name: model-repository
  mountPath: {{ .Values.modelRepository.path }}
{{- end }}
- name: traffic-table
  mountPath: {{ include "model-gateway.trafficDir" . }}
- name: tmp
  mountPath: /tmp
- name: dshm
  mountPath: /dev/shm
{{- end }}

{{- define "model-gateway.modelRepositoryClaim" -}}
{{- default (printf "%s-models" (include "model-gateway.fullname" .)) .Values.modelRepository.existingClaim }}
{{- end }}

{{- define "model-gateway.trafficTableVolume" -}}
{{- if .Values.trafficTable.persistence.enabled }}
persistentVolumeClaim:
  claimName: {{ default (printf "%s-traffic" (include "model-gateway.fullname" .)) .Values.trafficTable.persistence.existingClaim }}
{{- else }}
emptyDir: {}
{{- end }}
{{- end }}

{{/* The Ray custom resource of the FPGA group as KubeRay's rayStartParams wants it: '"{\"FPGA\": 1}"'. */}}
{{- define "model-gateway.fpgaRayResources" -}}
{{- $fpga := .Values.ray.workers.fpga }}
{{- printf "{\"%s\": %d}" $fpga.rayResource (int $fpga.devicesPerPod) | toJson | squote }}
{{- end }}
