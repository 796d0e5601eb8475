"""What runs inside the Ray cluster: the model repository, model runtimes and Ray Serve deployments."""
