"""Compatibility APIs: other sandboxes' wire protocols, translated at the edge to execbox's own
batch jobs and sessions (their models and mapping in one module each; their routes in ``api/``).

    sandboxfusion   SandboxFusion's ``/run_code``, ``/run_jupyter`` and ``/v1/ping`` (verl, SkyRL,
                    tinker-cookbook, the ``sandbox-fusion`` client)
"""
