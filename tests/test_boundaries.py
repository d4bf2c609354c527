"""The house's boundaries as rules that fail, not docstrings that hope: who may import what.

Every import statement of every module (function-level ones included) is read with `ast`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted(
    p
    for d in ("tracker", "hw", "cloud")
    for p in (ROOT / d).rglob("*.py")
    if "__pycache__" not in p.parts
)
# the bench: its scripts, scripts/faults and what it shares with the tests (scripts/benchkit)
BENCH = sorted(
    [*(ROOT / "scripts").glob("bench*.py"), ROOT / "scripts/faults"]
    + [p for p in (ROOT / "scripts/benchkit").rglob("*.py") if "__pycache__" not in p.parts]
)

# the one owner of each outside world
OWNERS = {
    "awscrt": {
        "tracker/link/uplink.py",
        "tracker/twin/collect_link.py",
        "tracker/setup/identity.py",
    },
    "awsiot": {
        "tracker/link/uplink.py",
        "tracker/twin/collect_link.py",
        "tracker/setup/identity.py",
    },
    "sqlite3": {"tracker/spool/store.py"},
    "serial": {"hw/gps.py", "hw/protocol_gpsd.py", "hw/protocol_replay.py"},
    "boto3": {"cloud/provisioning_hook.py", "cloud/location.py"},
    "botocore": {"cloud/provisioning_hook.py", "cloud/location.py"},
}
# modules that decide or transform and do no I/O: no outside world, no hardware, no threads
PURE = {
    "tracker/core/errors.py", "tracker/core/events.py", "tracker/core/fix.py",
    "tracker/core/scheduler.py", "tracker/receiver/nmea.py", "tracker/receiver/sentences.py",
    "tracker/receiver/epoch.py", "tracker/device/machine.py", "tracker/device/policy.py",
    "tracker/link/codec.py",
}  # fmt: skip
IMPURE = {"awscrt", "awsiot", "sqlite3", "serial", "socket", "ssl", "threading", "hw", "boto3"}
# what the hardware layer may use of the application: its error types, clock and NMEA framing
HW_MAY_USE = {"tracker.core.errors", "tracker.core.clock", "tracker.receiver.nmea"}
# what the Lambda handlers may use of the device's code: the pure codec
CLOUD_MAY_USE = {
    "tracker.link.codec", "tracker.core.fix", "tracker.core.errors", "tracker.core.limits"
}  # fmt: skip


def imports(path: Path) -> set[str]:
    """Every module name an import statement in `path` names (absolute, dotted)."""
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def top(name: str) -> str:
    return name.split(".")[0]


def test_the_sources_are_found() -> None:
    assert {"tracker/daemon/app.py", "hw/gps.py", "cloud/transform.py"} <= {rel(p) for p in SOURCES}


@pytest.mark.parametrize("library", sorted(OWNERS))
def test_each_outside_world_has_its_owners_only(library: str) -> None:
    users = {rel(p) for p in SOURCES if library in {top(n) for n in imports(p)}}
    assert users <= OWNERS[library], f"{library} imported outside its owners: {users}"
    assert users, f"nobody imports {library}: the rule is stale"


def test_pure_modules_do_no_io() -> None:
    bad = {
        rel(p): sorted(n for n in imports(p) if top(n) in IMPURE) for p in SOURCES if rel(p) in PURE
    }
    assert {k: v for k, v in bad.items() if v} == {}
    assert len(bad) == len(PURE)


def test_hardware_uses_only_the_applications_ground_floor() -> None:
    bad = {
        rel(p): sorted(
            n for n in imports(p) if top(n) == "tracker" and n not in HW_MAY_USE
            and not any(n.startswith(m + ".") for m in HW_MAY_USE)
        )
        for p in SOURCES
        if rel(p).startswith("hw/")
    }  # fmt: skip
    assert {k: v for k, v in bad.items() if v} == {}


def test_the_cloud_handlers_use_only_the_pure_codec() -> None:
    bad = {
        rel(p): sorted(
            n for n in imports(p) if top(n) == "tracker" and n not in CLOUD_MAY_USE
            and not any(n.startswith(m + ".") for m in CLOUD_MAY_USE)
        )
        for p in SOURCES
        if rel(p).startswith("cloud/")
    }  # fmt: skip
    assert {k: v for k, v in bad.items() if v} == {}


def test_the_device_never_imports_the_cloud_side() -> None:
    users = {
        rel(p)
        for p in SOURCES
        if not rel(p).startswith("cloud/") and "cloud" in {top(n) for n in imports(p)}
    }
    assert users == set()


def test_the_installed_packages_hold_no_bench_or_test_code() -> None:
    test_only = {"benchkit", "support", "pytest", "bench", "bench_plan", "conftest"}
    users = {rel(p): sorted(n for n in imports(p) if top(n) in test_only) for p in SOURCES}
    assert {k: v for k, v in users.items() if v} == {}


def test_the_bench_does_not_import_the_tests_or_pytest() -> None:
    assert {"scripts/bench.py", "scripts/faults", "scripts/benchkit/broker.py"} <= {
        rel(p) for p in BENCH
    }
    users = {
        rel(p): sorted(n for n in imports(p) if top(n) in {"support", "pytest"}) for p in BENCH
    }
    assert {k: v for k, v in users.items() if v} == {}


# the data's path through the package, lowest first: a module may import its own layer and the
# layers before it, never one after it (hw/ sits between receiver and device: it uses the ground
# floor and NMEA framing, and the daemon and setup use it)
LAYERS = ("core", "receiver", "device", "spool", "link", "daemon", "setup", "twin")
ENTRY = {"tracker/__init__.py", "tracker/__main__.py", "tracker/cli.py"}


def layer_of(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] == "tracker" and len(parts) > 1 and parts[1] in LAYERS:
        return LAYERS.index(parts[1])
    return None


def layered_edges(root: Path) -> tuple[int, list[str]]:
    """(imports between layers of the package under `root`, those that run upward)."""
    edges, upward = 0, []
    for p in sorted((root / "tracker").rglob("*.py")):
        parts = p.relative_to(root).parts
        if len(parts) < 3 or parts[1] not in LAYERS:
            continue
        for name in sorted(imports(p)):
            theirs = layer_of(name)
            if theirs is not None:
                edges += 1
                if theirs > LAYERS.index(parts[1]):
                    upward.append(f"{'/'.join(parts)} -> {name}")
    return edges, upward


def test_every_module_lives_in_a_layer() -> None:
    loose = {
        rel(p) for p in SOURCES
        if rel(p).startswith("tracker/") and rel(p).count("/") == 1 and rel(p) not in ENTRY
    }  # fmt: skip
    assert loose == set()
    folders = {p.name for p in (ROOT / "tracker").iterdir() if (p / "__init__.py").is_file()}
    assert folders == set(LAYERS)


def test_no_import_runs_upward() -> None:
    edges, upward = layered_edges(ROOT)
    assert edges > 100, "the import graph was not read"
    assert upward == []


def test_an_upward_import_is_caught(tmp_path: Path) -> None:
    (tmp_path / "tracker" / "core").mkdir(parents=True)
    (tmp_path / "tracker" / "core" / "x.py").write_text(
        "from tracker.core.errors import ConfigError\n"
        "def f() -> None:\n    from tracker.link import uplink\n"
    )
    edges, upward = layered_edges(tmp_path)
    assert edges == 4  # tracker.core.errors(.ConfigError), tracker.link(.uplink)
    assert upward == [
        "tracker/core/x.py -> tracker.link",
        "tracker/core/x.py -> tracker.link.uplink",
    ]


def local_graph(root: Path) -> dict[str, set[str]]:
    """module -> the package's own modules it imports (functions and TYPE_CHECKING included)."""
    files = {
        ".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__init__"): p
        for d in ("tracker", "hw")
        for p in (root / d).rglob("*.py")
        if "__pycache__" not in p.parts
    }
    return {
        mod: {n for n in imports(path) if n in files and n != mod} for mod, path in files.items()
    }


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import cycle, each as its modules in order (depth-first; the graph is small)."""
    found: list[list[str]] = []
    done: set[str] = set()

    def visit(mod: str, path: list[str]) -> None:
        if mod in path:
            found.append(path[path.index(mod) :])
            return
        if mod in done:
            return
        for dep in sorted(graph[mod]):
            visit(dep, [*path, mod])
        done.add(mod)

    for mod in sorted(graph):
        visit(mod, [])
    return found


def test_no_module_imports_itself_round_a_circle() -> None:
    graph = local_graph(ROOT)
    assert "hw.baud" in graph and sum(map(len, graph.values())) > 100
    assert cycles(graph) == []


def test_a_circle_is_found() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
