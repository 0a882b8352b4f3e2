import subprocess
import sys


def test_library_does_not_import_prefect_or_vllm():
    code = ("import pkgutil, importlib, sys, tracefactory\n"
            "for m in pkgutil.walk_packages(tracefactory.__path__, 'tracefactory.'):\n"
            "    importlib.import_module(m.name)\n"
            "bad = [m for m in ('prefect', 'vllm', 'torch') if m in sys.modules]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True)
