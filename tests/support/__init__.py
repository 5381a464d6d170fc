"""Helpers shared by the tests (not shipped with the service).

fake_backend.py   FakeBackend: kernels and batch workers at the seam of ``backends/base.py``,
                  run inside the test process, with knobs to inject faults
app.py            the real app (``create_app``) on a FakeBackend, lifespan run, an httpx client
"""
