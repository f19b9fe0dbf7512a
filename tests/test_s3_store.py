"""Stores on object storage, against a real S3-compatible server process on a loopback port.

moto's standalone server (``python -m moto.server``) is started by the ``s3`` fixture on 127.0.0.1
with request signing enforced; the store reaches it through s3fs (writes, claims, listings) and
polars' own reader (scans), with credentials only in the environment, as on AWS. ``memory://`` and
``file://`` URLs need no server.
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing as mp
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from polars.testing import assert_frame_equal

pytest.importorskip("s3fs")
pytest.importorskip("moto")
pytestmark = pytest.mark.s3

from tests._s3server import FlakyProxy, S3Server, use_env  # noqa: E402
from trajlib import schema as S  # noqa: E402
from trajlib.cli import main  # noqa: E402
from trajlib.errors import StoreError  # noqa: E402
from trajlib.store import create_store, open_store  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "trajlib"]
STORE_TESTS = ROOT / "tests" / "store"
sys.path.insert(0, str(STORE_TESTS))

from _crash_writer import concurrent_writer, run_ids  # noqa: E402
from _store_fixtures import make_run  # noqa: E402


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    server = S3Server()
    try:
        with use_env(server.env()):
            yield server
    finally:
        server.stop()


@pytest.fixture
def url(s3: S3Server) -> str:
    return f"s3://{s3.bucket()}/stores/demo"


def _child_env() -> dict[str, str]:
    """The environment of child processes: this checkout's trajlib, the AWS variables."""
    path = [str(ROOT), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in path if p)}


def _check_run(store, kw: dict) -> None:
    rid = kw["run"]["run_id"]
    assert_frame_equal(store.steps(run_ids=rid).collect(), kw["steps"])
    assert_frame_equal(store.decisions(run_ids=rid).collect().sort(S.STEP), kw["decisions"])
    got = store.branches(run_ids=rid).collect().sort(S.STEP, S.ACTION)
    assert_frame_equal(got, kw["branches"].sort(S.STEP, S.ACTION))
    arr, names, stats = store.layers(rid)
    np.testing.assert_array_equal(arr, kw["layers"])
    assert names == kw["layer_names"] and stats == list(S.LAYER_STATS)


# --------------------------------------------------------------------------- no server needed
def test_memory_url_commits_validates_compacts_and_collects_garbage():
    url = f"memory://trajlib-test/{time.time_ns()}"
    store = create_store(url)
    runs = [make_run(f"m{i}", n_steps=60, every=20) for i in range(3)]
    assert all(store.write_run(**kw) for kw in runs)
    assert not store.write_run(**runs[0])  # committed once
    for kw in runs:
        _check_run(open_store(url), kw)
    # an unfinished run (fragments, no marker) is invisible and is garbage
    store.root.put_atomic("steps/m9.parquet", b"partial", "m9")
    assert "m9" not in store.steps().select(S.RUN_ID).collect()[S.RUN_ID].to_list()
    assert store.validate() == []
    assert store.gc() == ["steps/m9.parquet"]
    stats = store.compact()
    assert stats["runs"] == 3 and stats["files_after"] < stats["files_before"]
    assert store.validate() == []
    for kw in runs:
        _check_run(open_store(url), kw)


def test_claims_of_other_hosts_expire_on_object_storage_only(monkeypatch, tmp_path):
    import json

    monkeypatch.setenv("TRAJLIB_CLAIM_TTL_S", "3600")
    for where in (f"memory://trajlib-test/{time.time_ns()}", str(tmp_path / "st")):
        store = create_store(where)
        for rid, age in (("old", 7200.0), ("new", 60.0)):
            body = {"pid": 1, "host": "another-host", "token": "t" + rid, "start": None}
            body["created"] = time.time() - age
            store.root.put_atomic(f"locks/{rid}.claim", json.dumps(body).encode(), rid)
        remote = not store.root.is_local
        assert store.claim("old") is remote  # a dead host's claim: taken over after the TTL
        assert not store.claim("new")  # a recent claim of another host is live
        store.release("old")


def test_file_url_is_the_local_directory(tmp_path):
    store = create_store(f"file://{tmp_path / 'st'}")
    assert store.root.is_local and store.path == tmp_path / "st"
    assert store.write_run(**make_run("f1", n_steps=40, every=20))
    assert open_store(tmp_path / "st").committed_run_ids() == {"f1"}


# --------------------------------------------------------------------------- a real S3 server
def test_commit_and_read_back_with_the_on_disk_layout(s3, url, tmp_path):
    store = create_store(url)
    local = create_store(tmp_path / "local")
    runs = [make_run(f"r{i}", n_steps=120, every=40) for i in range(3)]
    for kw in runs:
        assert store.write_run(**kw) and local.write_run(**kw)
    fresh = open_store(url)
    assert fresh.committed_run_ids() == {"r0", "r1", "r2"}
    for kw in runs:
        _check_run(fresh, kw)
    assert fresh.validate() == []
    info = fresh.info()
    assert (info["runs"], info["steps"], info["path"]) == (3, 360, url)
    # the same names as on disk (directories aside)
    bucket, _, prefix = url[len("s3://") :].partition("/")
    keys = {k[len(prefix) + 1 :] for k in s3.objects(bucket)}
    on_disk = {str(p.relative_to(local.path)) for p in local.path.rglob("*") if p.is_file()} - {
        "locks/.takeover.lock"
    }
    assert keys == on_disk


def test_a_run_is_visible_only_once_its_marker_is_written(s3, url):
    store = create_store(url)
    kw = make_run("v1", n_steps=50, every=25)
    # everything but the marker, as a writer killed just before its last PUT leaves it
    buf = io.BytesIO()
    kw["steps"].write_parquet(buf)
    store.root.put_atomic("steps/v1.parquet", buf.getvalue(), "v1")
    assert store.steps().collect().height == 0 and not store.is_committed("v1")
    assert store.validate() == []
    assert store.write_run(**kw)  # the claim is free: the run is redone and committed
    assert store.steps().collect().height == 50 and store.validate() == []


def test_claims_are_conditional_puts(s3, url):
    a, b = create_store(url), open_store(url)
    assert a.claim("c1")
    assert not b.claim("c1")  # the server refused the second create-if-absent
    assert a.root.put_new("locks/x", b"1", "x") and not b.root.put_new("locks/x", b"2", "x")
    assert a.root.read_bytes("locks/x") == b"1"
    a.release("c1")
    assert b.claim("c1")
    b.release("c1")


def test_cli_store_commands_on_an_s3_url(s3, url, capsys):
    store = create_store(url)
    for i in range(2):
        store.write_run(**make_run(f"k{i}", n_steps=40, every=20))
    assert main(["store", "info", url]) == 0
    assert "runs       2" in capsys.readouterr().out
    assert main(["store", "validate", url]) == 0
    assert main(["store", "compact", url]) == 0
    assert main(["store", "gc", url]) == 0
    assert main(["store", "validate", url]) == 0
    out = capsys.readouterr().out
    assert f"{url}: ok" in out and "compacted 2 run(s)" in out
    assert open_store(url).steps().collect().height == 80


def test_missing_bucket_is_one_line_naming_the_url(s3, capsys):
    url = "s3://no-such-bucket-trajlib/x"
    assert main(["store", "info", url]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and url in err and "bucket does not exist" in err
    with pytest.raises(StoreError, match="bucket does not exist"):
        create_store(url)
    recipe = str(ROOT / "collectors" / "quickstart.toml")
    assert main(["collect", recipe, "--store", url, "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and url in err and "bucket does not exist" in err


def test_refused_credentials_are_one_line_and_never_shown(s3, url, capsys):
    create_store(url)
    wrong = "WrongSecretDoNotPrint0123456789"
    with use_env({**s3.env(), "AWS_SECRET_ACCESS_KEY": wrong}):
        assert main(["store", "validate", url]) == 2
        err = capsys.readouterr().err.strip()
        with pytest.raises(StoreError) as exc:
            create_store(url)
    assert len(err.splitlines()) == 1 and url in err and "credentials were refused" in err
    for text in (err, str(exc.value)):
        assert wrong not in text and s3.secret not in text and s3.key_id not in text
    # user-info in a URL is redacted too
    with pytest.raises(StoreError) as exc:
        open_store(f"s3://AKIAUSER:{wrong}@no-such-bucket-trajlib/x")
    assert wrong not in str(exc.value) and "***@" in str(exc.value)


def test_credentials_are_never_written_to_the_store_or_the_log(s3, url, tmp_path):
    store = create_store(url)
    store.write_run(**make_run("s1", n_steps=40, every=20))
    store.claim("s2")  # a claim object too
    log = subprocess.run(
        [*CLI, "store", "info", url],
        env=_child_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert log.returncode == 0, log.stderr
    bucket = url[len("s3://") :].partition("/")[0]
    blobs = [*s3.objects(bucket).values(), log.stdout.encode(), log.stderr.encode()]
    assert len(blobs) > 10
    for blob in blobs:
        assert s3.secret.encode() not in blob and s3.key_id.encode() not in blob
    store.release("s2")


def test_dropped_connection_is_retried_counted_then_one_line(s3):
    proxy = FlakyProxy(s3.port)
    try:
        with use_env(s3.env(proxy.endpoint)):
            url = f"s3://{s3.bucket()}/flaky"
            store = create_store(url)
            kw = make_run("d1", n_steps=40, every=20)
            before = store.retries
            proxy.down()
            threading_up = _up_after_a_retry(proxy)  # the outage ends while write_run retries
            assert store.write_run(**kw)
            threading_up.join()
            assert store.retries > before  # each retry counted
            proxy.down()  # an outage that outlasts the retries
            os.environ["TRAJLIB_STORE_RETRIES"] = "2"
            try:
                t0 = time.monotonic()
                with pytest.raises(StoreError) as exc:
                    open_store(url).write_run(**make_run("d2", n_steps=40, every=20))
                assert time.monotonic() - t0 < 30
                msg = str(exc.value)
                assert len(msg.splitlines()) == 1 and url in msg and "cannot reach" in msg
                assert main(["store", "validate", url]) == 2
            finally:
                del os.environ["TRAJLIB_STORE_RETRIES"]
            proxy.up()
            after = open_store(url)
            assert after.committed_run_ids() == {"d1"}  # d2: never half-committed
            assert after.validate() == []
            assert after.write_run(**make_run("d2", n_steps=40, every=20))
            assert after.validate() == []
    finally:
        proxy.down()


def test_retries_are_counted_in_the_collection_report(s3):
    import functools

    from trajlib.collect import collect, parse_recipe

    recipe = parse_recipe(
        {"collect": {"tasks": ["teacher-student"], "runs_per_task": 1, "budget": 20, "every": 10}},
        name="s3-retries",
    )
    proxy = FlakyProxy(s3.port)
    try:
        with use_env(s3.env(proxy.endpoint)):
            url = f"s3://{s3.bucket()}/retried"
            create_store(url)
            proxy.down()
            timer = _up_after_a_retry(proxy)  # the outage ends while the worker retries
            rep = collect(recipe, functools.partial(open_store, url), workers=1, progress=False)
            timer.join()
            assert (rep.committed, rep.failed) == (1, 0), rep.errors
            assert rep.retries >= 1
            assert open_store(url).validate() == []
    finally:
        proxy.down()


def _up_after_a_retry(proxy: FlakyProxy):  # noqa: ANN202 - a started thread
    """Bring ``proxy`` back once this process has retried a request (the outage was seen)."""
    import threading

    from trajlib.store._fs import retry_count

    start = retry_count()

    def watch() -> None:
        deadline = time.monotonic() + 60
        while retry_count() == start and time.monotonic() < deadline:
            time.sleep(0.01)
        proxy.up()

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    return t


@pytest.mark.slow
def test_four_concurrent_writer_processes_commit_each_run_once(s3, url):
    create_store(url)
    ids = run_ids(12)
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(4), ctx.Queue()
    env = _child_env()
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = env["PYTHONPATH"]
    try:
        procs = [
            ctx.Process(target=concurrent_writer, args=(url, ids[::step], 60, barrier, queue))
            for step in (1, 1, 2, 3)  # overlapping sets: every run has 2-4 writers
        ]
        for p in procs:
            p.start()
        results = [queue.get(timeout=240) for _ in procs]
        for p in procs:
            p.join(60)
            assert p.exitcode == 0
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old
    wins = {rid: sum(r.get(rid, False) for r in results) for rid in ids}
    assert wins == dict.fromkeys(ids, 1)  # 0 duplicates, none lost
    store = open_store(url)
    assert store.validate() == []
    assert store.runs().collect().height == 12
    assert store.steps().collect().height == 12 * 60


@pytest.mark.slow
def test_sigkilled_writer_loses_nothing_committed_and_resumes(s3, url):
    n, steps = 12, 120
    script = str(ROOT / "tests" / "_s3_kill_writer.py")
    # create_store PUTs layers.zarr/zarr.json; each run then PUTs steps, decisions, branches, its
    # layer array and last its marker: the 15th such PUT is r004's decisions, so the writer dies
    # with r004's steps on the server and no marker
    cmd = [sys.executable, script, url, str(n), str(steps), "15"]
    died = subprocess.run(cmd, env=_child_env(), capture_output=True, text=True, timeout=240)
    assert died.returncode == -signal.SIGKILL, died.stderr[-2000:]
    store = open_store(url)
    committed = store.committed_run_ids()
    assert committed == {"r000", "r001", "r002", "r003"}
    assert {"r004.parquet"} <= set(store.root.listdir("steps"))  # half a commit is there ...
    assert "r004" not in set(store.steps().collect()[S.RUN_ID].unique().to_list())  # ... unseen
    assert store.validate() == []
    expected = {rid: make_run(rid, n_steps=steps, n_layers=2) for rid in run_ids(n)}
    for rid in sorted(committed):
        _check_run(store, expected[rid])
    # gc removes the half commit and the dead writer's claim, nothing committed
    assert {"steps/r004.parquet", "locks/r004.claim"} <= set(store.gc())
    assert store.committed_run_ids() == committed and store.validate() == []
    # resume: the rest is committed, nothing committed is redone
    cmd[-1] = "0"
    out = subprocess.run(cmd, env=_child_env(), capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-2000:]
    final = open_store(url)
    assert final.committed_run_ids() == set(run_ids(n))
    assert final.validate() == []
    for rid in run_ids(n):
        _check_run(final, expected[rid])
    final.gc()
    assert final.validate() == []
    assert not [c for c in final.root.listdir("locks") if c.endswith(".claim")]


@pytest.mark.slow
@pytest.mark.ray
def test_ray_collection_into_an_s3_store_validates(s3, url, tmp_path):
    pytest.importorskip("ray")
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(
        'name = "s3-ray"\n'
        "[collect]\n"
        'tasks = ["digits-mlp", "teacher-student"]\n'
        "runs_per_task = 2\npopulation = 2\nbudget = 40\nevery = 20\nval_every = 20\n"
        "[branch]\nenabled = true\nhorizon = 10\ncooldown = 0\n"
    )
    cmd = [*CLI, "collect", str(recipe), "--store", url]
    cmd += ["--executor", "ray", "--workers", "2", "--quiet"]
    out = subprocess.run(cmd, env=_child_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "collected 4 runs" in out.stdout
    store = open_store(url)
    assert store.validate() == []
    steps = store.steps().collect()
    assert steps.group_by(S.RUN_ID).len()["len"].to_list() == [40] * 4
    assert store.branches().collect().height > 0
    for blob in (out.stdout, out.stderr):
        assert s3.secret not in blob
    # then fit straight from the URL, as docs/store.md shows
    assert main(["fit", url, "--kind", "gbt", "--out", str(tmp_path / "model")]) == 0
    assert (tmp_path / "model" / "manifest.json").exists()


# --------------------------------------------------------------------------- the docs
def _section(title: str) -> str:
    text = (ROOT / "docs" / "store.md").read_text(encoding="utf-8")
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else None]


def test_docs_trajlib_lines_parse_against_the_cli():
    import shlex

    from trajlib.cli import build_parser

    block = re.findall(r"```bash\n(.*?)```", _section("Collect on many machines"), flags=re.S)
    lines = [
        ln.split("#")[0].strip()
        for b in block
        for ln in b.splitlines()
        if ln.startswith("trajlib ")
    ]
    assert len(lines) >= 4 and any("--executor ray" in ln and "s3://" in ln for ln in lines)
    for line in lines:
        args = build_parser().parse_args(shlex.split(line)[1:])
        values = [x for v in vars(args).values() for x in (v if isinstance(v, list) else [v])]
        assert any(str(v).startswith("s3://") for v in values), line  # fit takes a list of stores


def test_docs_python_block_reads_an_s3_store(s3):
    code = re.findall(r"```python\n(.*?)```", _section("Collect on many machines"), flags=re.S)
    assert len(code) == 1 and "s3://my-bucket/trajlib/demo" in code[0]
    with contextlib.suppress(Exception):
        s3.client().create_bucket(Bucket="my-bucket")
    store = create_store("s3://my-bucket/trajlib/demo")
    kw = make_run("doc1", n_steps=50, every=25, task="digits-mlp")
    store.write_run(**kw)
    ns: dict[str, object] = {}
    exec(compile(code[0], "docs/store.md", "exec"), ns)  # noqa: S102
    assert ns["losses"].height == 50  # type: ignore[attr-defined]
    np.testing.assert_array_equal(ns["arr"], kw["layers"])


@pytest.mark.slow
@pytest.mark.ray
def test_a_store_error_in_a_ray_worker_is_one_line(s3, monkeypatch):
    pytest.importorskip("ray")
    import functools

    from trajlib.collect import collect, parse_recipe

    monkeypatch.setenv("PYTHONPATH", _child_env()["PYTHONPATH"])
    recipe = parse_recipe(
        {"collect": {"tasks": ["teacher-student"], "runs_per_task": 1, "budget": 20, "every": 10}},
        name="s3-ray-error",
    )
    url = "s3://no-such-bucket-trajlib/x"
    with pytest.raises(StoreError) as exc:
        collect(
            recipe, functools.partial(open_store, url), executor="ray", workers=1, progress=False
        )
    msg = str(exc.value)
    assert len(msg.splitlines()) == 1 and url in msg and "bucket does not exist" in msg
