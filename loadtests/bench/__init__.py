"""The gateway's own benchmarks (they start the gateway, Ray and reference servers themselves).

`python -m loadtests.bench` is the side-by-side benchmark (sidebyside.py); `hotpath`, `shadow`,
`drift` and `soak` measure one part each. The load tool they drive is `loadtests` itself, which
works against any Open Inference Protocol server.
"""
