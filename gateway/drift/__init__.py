"""The drift sidecar: watches live inputs and predictions in the request log, compares them with each
version's reference statistics, exports scores and reports, and submits a retraining job when the policy
fires (docs/DRIFT.md). A separate process: it reads only the request log's record format and the model
repository, never the data plane.
"""
