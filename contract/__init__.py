"""What the gateway and the code running inside Ray agree on, and the only thing they share.

The model repository's layout and manifest, the datatype table, tensors as arrays, faults that cross
Ray, ramp plans, the request log's record format, the import paths by which the gateway starts
serving-side code (it never imports `serving` itself), and which extra installs an optional dependency.
"""
