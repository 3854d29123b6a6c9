"""CI check of a plain (non-editable) ``pip install '.[serve]'``: the installed package serves
the page, the API colorizes a photo, and SIGTERM stops the server with exit code 0.

python .ci/serve_smoke.py make-run DIR   # with the CI venv: the tests' tiny random-weight run
python .ci/serve_smoke.py check RUN      # with the fresh venv's python, outside the repository
"""

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import urllib.request


def make_run(directory: str) -> None:
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))
    from conftest import tiny_run

    class Factory:  # tiny_run's only use of pytest's tmp_path_factory
        def getbasetemp(self):
            return pathlib.Path(directory)

    print(tiny_run(Factory(), "lab_gan", trained=False))


def check(run: str) -> None:
    import cv2
    import numpy as np

    import jaxcolor

    where = os.path.dirname(jaxcolor.__file__)
    assert "site-packages" in where, f"jaxcolor imported from {where}, not the installed copy"
    server = subprocess.Popen([sys.executable, "-m", "jaxcolor.serve", "--model", run,
                               "--port", "0"], stdout=subprocess.PIPE, text=True)
    try:
        for line in server.stdout:
            print("server:", line.rstrip())
            found = re.search(r"serving on (http://\S+)", line)
            if found:
                url = found.group(1)
                break
        else:
            raise SystemExit("the server did not start")
        page = urllib.request.urlopen(url, timeout=60).read().decode()
        assert "static/page.js" in page, page[:300]
        for name in ("page.js", "page.css"):
            assert urllib.request.urlopen(url + "static/" + name, timeout=60).status == 200
        health = json.load(urllib.request.urlopen(url + "api/health", timeout=60))
        photo = np.zeros((30, 50, 3), np.uint8) + np.arange(50, dtype=np.uint8)[None, :, None]
        request = urllib.request.Request(url + "api/colorize", method="POST",
                                         data=cv2.imencode(".png", photo)[1].tobytes())
        with urllib.request.urlopen(request, timeout=120) as response:
            out = cv2.imdecode(np.frombuffer(response.read(), np.uint8), cv2.IMREAD_COLOR)
        assert out.shape == photo.shape, out.shape
        server.send_signal(signal.SIGTERM)
        code = server.wait(60)
        assert code == 0, f"exit code {code}"
        print(f"ok: installed jaxcolor ({where}) served the page and a {health['model']['task']} "
              "model, and stopped on SIGTERM")
    finally:
        if server.poll() is None:
            server.kill()


if __name__ == "__main__":
    {"make-run": make_run, "check": check}[sys.argv[1]](sys.argv[2])
