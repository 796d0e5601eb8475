"""Generated protobuf/gRPC code for ``protos/*.proto``. DO NOT EDIT.

Regenerate with ``python scripts/gen_protos.py`` (``--check`` verifies freshness).

``POOL`` is the private descriptor pool every module here registers its file in
(tritonclient puts identically named ``inference.*`` messages in the default pool).
"""

from google.protobuf import descriptor_pool as _descriptor_pool

POOL = _descriptor_pool.DescriptorPool()
