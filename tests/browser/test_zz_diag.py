# TEMPORARY diagnostic (to be deleted): runs the e2e test with the options_from_form signature fixed
import subprocess, sys, time
from pathlib import Path
import pytest, requests
import tests.harness as H
from tests.browser import test_browser_e2e as T

FIX = Path("/tmp/gpuhub_diag_config.py")
FIX.write_text(
    "exec(compile(open('/work/main/jupyterhub_config.py').read(), 'jupyterhub_config.py', 'exec'))\n"
    "from gpuhub.options import options_from_form as _off\n"
    "c.GpuhubSpawner.options_from_form = lambda formdata, spawner=None: _off(formdata)\n"
)

class DiagHub(H.HubProcess):
    def start(self, timeout=60):
        self.state.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([str(Path(sys.executable).parent / "jupyterhub"), "-f", str(FIX)],
            cwd=self.tmp, env=self.env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(self.log_tail())
            try:
                if requests.get(f"{self.url}/hub/api/", timeout=1).ok:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise RuntimeError("timeout")

T.HubProcess = DiagHub
from tests.browser.test_browser_e2e import *  # noqa
