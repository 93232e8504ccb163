"""Installs tests/fake_cupy.py in the Python processes that tests start (the CLI tests run the real commands).

tests/conftest.py puts this folder and tests/ on PYTHONPATH when TINYGRAD_GPT_TEST_FAKE_CUPY=1.
"""

import os

if os.environ.get("TINYGRAD_GPT_TEST_FAKE_CUPY") == "1":
    import fake_cupy

    fake_cupy.install()
