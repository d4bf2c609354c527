"""scripts/lambda-bundle: a reproducible zip whose handlers run with nothing but the zip."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path
from types import ModuleType

from support.cloud import batches, drive_records, firehose_event, live, rule_output, rule_record

from cloud import transform

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts/lambda-bundle"
EXPECTED = {
    "cloud/__init__.py", "cloud/location.py", "cloud/message.py",
    "cloud/provisioning_hook.py", "cloud/transform.py",
    "tracker/__init__.py", "tracker/core/__init__.py", "tracker/core/errors.py",
    "tracker/core/fix.py", "tracker/core/limits.py", "tracker/link/__init__.py",
    "tracker/link/codec.py",
}  # fmt: skip
DEVICE_ONLY = ["awscrt", "awsiot", "serial", "sqlite3", "pynmea2", "transitions", "cryptography"]


def bundle_module() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("lambda_bundle", str(SCRIPT))
    spec = importlib.util.spec_from_loader("lambda_bundle", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def build(out: Path) -> Path:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(out)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{out}: {len(EXPECTED)} files, sha256 ")
    return out


def test_import_graph_of_cloud_stays_pure() -> None:
    files = {p.relative_to(ROOT).as_posix() for p in bundle_module().closure()}
    assert files == EXPECTED
    # and at run time: with every device-only module made unimportable (as in the Lambda
    # runtime; botocore uses awscrt only when it happens to be installed) the handlers load
    code = (
        f"import sys\nfor m in {DEVICE_ONLY!r}: sys.modules[m] = None\n"
        "import cloud.transform, cloud.location, cloud.provisioning_hook\n"
        "print([m for m, v in sys.modules.items() if v is not None and m.split('.')[0] in "
        f"{DEVICE_ONLY!r}])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_bundle_is_reproducible_and_holds_only_the_closure(tmp_path: Path) -> None:
    a = build(tmp_path / "a.zip")
    b = build(tmp_path / "b" / "lambda.zip")
    assert a.read_bytes() == b.read_bytes()
    with zipfile.ZipFile(a) as z:
        assert set(z.namelist()) == EXPECTED
        for info in z.infolist():
            assert info.date_time == (1980, 1, 1, 0, 0, 0)
            assert info.external_attr >> 16 == 0o644
            assert z.read(info) == (ROOT / info.filename).read_bytes()


# Lambda unpacks the zip into /var/task and puts that first on sys.path; -I -S leaves only the
# standard library on it (no site-packages, no checkout, no current directory)
RUN_FROM_ZIP = """
import json, sys
zip_path, extra = sys.argv[1], sys.argv[2:]
sys.path[:0] = [zip_path, *extra]
from cloud.transform import handler
import tracker.link.codec
assert tracker.link.codec.__file__.startswith(zip_path), tracker.link.codec.__file__
out = handler(json.load(sys.stdin))
bad = [m for m in {device_only!r} if m in sys.modules]
json.dump({{"out": out, "device_only": bad}}, sys.stdout)
"""


def unpack(z: Path) -> Path:
    task = z.parent / "task"
    with zipfile.ZipFile(z) as f:
        f.extractall(task)
    return task


def test_transform_runs_from_the_zip_alone(tmp_path: Path) -> None:
    task = unpack(build(tmp_path / "lambda.zip"))
    payloads = [p for p, _ in batches(drive_records()[:300])] + [live(drive_records()[0])]
    event = firehose_event([rule_record(p) for p in [*payloads, b"garbage"]])
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", RUN_FROM_ZIP.format(device_only=DEVICE_ONLY),
         str(task)],
        input=json.dumps(event), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert got["device_only"] == []
    assert got["out"] == transform.handler(event)
    assert [r["result"] for r in got["out"]["records"]][-2:] == ["Ok", "ProcessingFailed"]


def test_boto3_handlers_import_from_the_zip_with_the_runtime_boto3(tmp_path: Path) -> None:
    task = unpack(build(tmp_path / "lambda.zip"))
    site = sysconfig.get_paths()["purelib"]  # stands in for the runtime's boto3
    code = (
        "import json, sys\n"
        "sys.path[:0] = sys.argv[1:]\n"
        "import cloud.provisioning_hook as h, cloud.location as loc\n"
        "assert h.__file__.startswith(sys.argv[1]) and loc.__file__.startswith(sys.argv[1])\n"
        "print(json.dumps([h.handler({'parameters': {}}),"
        f" loc.handler({json.dumps(rule_output(b'garbage'))})]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code, str(task), site],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [
        {"allowProvisioning": False},
        {"updated": 0, "calls": 0, "errors": 1},
    ]


def test_a_device_only_import_stops_the_build(tmp_path: Path) -> None:
    module = bundle_module()
    fake = tmp_path / "cloud"
    fake.mkdir()
    (fake / "__init__.py").write_text("")
    (fake / "bad.py").write_text("def f():\n    import sqlite3\n")
    module.ROOT = tmp_path  # type: ignore[attr-defined]
    try:
        module.closure()
    except module.BundleError as exc:
        assert "cloud/bad.py imports sqlite3, which must stay on the device" in str(exc)
    else:
        raise AssertionError("sqlite3 was let in")
