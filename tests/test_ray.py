"""The Ray engine gives the local engine's answer: sharded exact search, Ray Data embedding, failures.

One local Ray instance for the module (2 CPUs, a 200 MB object store, no dashboard). A small GM
dataset is fingerprinted locally; the sharded search over its reference set (plus rows that make
ties and near-ties across shard borders) must return the local Manifold's indices, distances and
artifacts byte for byte, in RGB (uint8 codes, integer path) and FREQ (float embeddings).
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from fingerprint_core import artifacts, ray_engine, spaces
from fingerprint_core.manifold import Manifold
from fingerprint_core.workspace import Workspace

pytestmark = pytest.mark.slow
needs_ray = pytest.mark.skipif(not ray_engine.available(),
                               reason="Ray is not installed (optional extra: MANIFPT_EXTRAS=ray bash scripts/setup.sh)")


def test_without_ray_the_message_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    with pytest.raises(ray_engine.RayUnavailable, match="MANIFPT_EXTRAS=ray"):
        ray_engine.require_ray()
    with pytest.raises(ray_engine.RayUnavailable, match=r"ray\[data\]==2\.60\.0"):
        ray_engine.ShardedManifold(np.zeros((4, 2), np.float32))


@pytest.fixture(scope="module")
def cluster():
    ray = pytest.importorskip("ray")
    ray_engine.connect(num_cpus=2, object_store_memory=200 * 2**20)
    yield ray
    ray_engine.shutdown()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    from fingerprint_core.pipeline import fingerprint
    from gmdata import make_gm_dataset

    data = make_gm_dataset(tmp_path_factory.mktemp("ray-data"), channels=3, n_real=240, n_per_model=20)
    ws_path = tmp_path_factory.mktemp("ray-ws") / "ws"
    fingerprint(data, ws_path, space_names=("rgb", "freq"), device="cpu")
    return Workspace.open(ws_path)


def _queries(ws: Workspace) -> np.ndarray:
    return np.concatenate([ws.images(m) for m in ws.model_names(include_real=True)])


def _rgb_case(ws: Workspace, tmp_path_factory):
    """uint8 reference + duplicates of rows 0..4 at the end (ties across the borders), and a query
    at integer distance 4 from row J and from an appended row (an exact tie: row J must win)."""
    ref = np.asarray(ws.space_reference("rgb"))
    n = len(ref)
    j = 7
    q = ref[j].copy().reshape(-1)
    c0 = int(np.argmax(q < 250))
    q[c0] += 2
    c1 = int(np.argmax((q < 250) & (np.arange(q.size) != c0)))
    twin = q.copy()
    twin[c1] += 2  # |q - twin|^2 = 4 = |q - ref[j]|^2
    extra = np.concatenate([ref[:5], twin.reshape(1, *ref.shape[1:])])
    aug = np.concatenate([ref, extra])
    path = tmp_path_factory.mktemp("ray-rgb") / "reference.npy"
    np.save(path, aug)
    special = np.concatenate([ref[:5], q.reshape(1, *ref.shape[1:])])
    return np.load(path, mmap_mode="r"), special, {"dup": list(range(5)), "tie": (j, n + 5)}


def _freq_case(ws: Workspace):
    """float32 FREQ reference + duplicates at the end, and a near-tie that float32 cannot see: a
    query at float64 distance D0 + ulp^2 from row J and D0 from an appended row (which must win)."""
    ref = np.asarray(ws.space_reference("freq"))
    n = len(ref)
    j = 11
    r = ref[j]
    q = r.copy()
    q[0] = r[0] - np.float32(1.0)
    q[1] = np.nextafter(r[1], np.float32(np.inf))
    closer = r.copy()
    closer[1] = q[1]
    d_far = np.sum((r.astype(np.float64) - q) ** 2)
    d_near = np.sum((closer.astype(np.float64) - q) ** 2)
    assert d_near < d_far and np.float32(d_near) == np.float32(d_far)  # the case is what it claims
    aug = np.concatenate([ref, ref[:5], closer[None]])
    special = np.concatenate([ref[:5], q[None]])
    return aug, special, {"dup": list(range(5)), "near": n + 5}


@pytest.fixture(scope="module")
def rgb(cluster, workspace, tmp_path_factory):
    aug, special, marks = _rgb_case(workspace, tmp_path_factory)
    sm = ray_engine.ShardedManifold(aug, shards=3, device="cpu", retries=1, query_batch=64, by_path=True)
    assert sm.by_path  # the actors memory-map their rows of the .npy (the FREQ case: through the object store)
    yield sm, aug, special, marks
    sm.close()


@pytest.fixture(scope="module")
def freq(cluster, workspace):
    aug, special, marks = _freq_case(workspace)
    sm = ray_engine.ShardedManifold(aug, shards=2, device="cpu", retries=0, query_batch=64)
    yield sm, aug, special, marks
    sm.close()


def _check_shards(sm, aug):
    info = sm.shard_info()
    assert len(info) == len(sm.bounds) >= 2
    assert len({i["pid"] for i in info}) == len(info)  # one actor process each
    for (a, b), i in zip(sm.bounds, info, strict=True):
        assert (i["offset"], i["rows"]) == (a, b - a)  # each holds only its own rows
    assert sum(i["rows"] for i in info) == len(aug)
    return info


@needs_ray
@pytest.mark.parametrize("case", ["rgb", "freq"])
def test_sharded_search_is_the_local_answer(case, request, workspace):
    sm, aug, special, marks = request.getfixturevalue(case)
    _check_shards(sm, aug)
    local = Manifold(aug, device="cpu")
    assert (sm.size, sm.dim, sm.pixels) == (local.size, local.dim, local.pixels)
    space = spaces.get(case, device="cpu")
    images = _queries(workspace)
    queries = images if case == "rgb" else space.embed(images).numpy()
    for q in (queries, special):
        i_loc, d_loc = local.nearest(q)
        i_ray, d_ray = sm.nearest(q)
        assert i_ray.dtype == torch.int64 and d_ray.dtype == torch.float32
        assert torch.equal(i_ray, i_loc) and torch.equal(d_ray, d_loc)
    i_sp, d_sp = sm.nearest(special)
    assert i_sp[:5].tolist() == marks["dup"]  # duplicates in the last shard: the lower global index wins
    assert d_sp[:5].tolist() == [0.0] * 5
    if case == "rgb":
        j, twin = marks["tie"]
        assert j < sm.bounds[0][1] and twin >= sm.bounds[-1][0]  # in the first and the last shard
        assert int(i_sp[5]) == j  # exact tie (integer distance 4) across shards: lowest index
        assert float(d_sp[5]) == np.float32(4 / 255**2)
    else:
        assert int(i_sp[5]) == marks["near"]  # float32 ties, float64 does not: the nearer row wins
    assert sm.ambiguous >= 5
    assert sm.last_stats is not None and sm.last_stats.queries == len(special)


@needs_ray
@pytest.mark.parametrize("case", ["rgb", "freq"])
def test_artifacts_and_entries_match_the_local_engine(case, request, workspace):
    """artifacts.project over the sharded manifold writes what the local engine wrote."""
    sm, aug, _, _ = request.getfixturevalue(case)
    local = Manifold(aug, device="cpu")
    space = spaces.get(case, device="cpu")
    for model in workspace.model_names(include_real=True):
        images = np.asarray(workspace.images(model))
        p_ray = artifacts.project(space, images, sm)
        p_loc = artifacts.project(space, images, local)
        for a, b in ((p_ray.nearest, p_loc.nearest), (p_ray.distance, p_loc.distance),
                     (p_ray.artifacts, p_loc.artifacts)):
            assert torch.equal(a, b)
        # the workspace entries the local engine wrote (the appended rows are never nearer here)
        assert np.array_equal(p_ray.nearest.numpy(), workspace.nearest(model, case))
        assert np.array_equal(p_ray.distance.numpy(), workspace.distance(model, case))
        stored = np.asarray(workspace.artifacts(model, case))
        assert np.array_equal(p_ray.artifacts.numpy().astype(np.float16).view(np.uint16), stored.view(np.uint16))


@needs_ray
def test_ray_data_embedding_is_the_local_embedding(cluster, workspace):
    images = np.asarray(workspace.images(workspace.model_names()[0]))
    local = spaces.get("freq", device="cpu", batch_size=8)
    emb = ray_engine.ray_embed("freq", {}, images, 8)
    assert torch.equal(emb, local.embed(images))
    wrapped = ray_engine.RaySpace(local)
    assert wrapped.name == "freq" and wrapped.identity() == local.identity()
    assert ray_engine.ray_space(spaces.get("rgb", device="cpu")).name == "rgb"  # pixel-exact: kept local


@needs_ray
def test_a_killed_shard_is_restarted_and_answers_the_same(rgb, cluster):
    sm, aug, special, _ = rgb
    before = sm.nearest(special)
    victim = sm.actors[1]
    assert sm.shard_info()[1]["answered"] > 0  # it answered batches before
    cluster.kill(victim)
    after = sm.nearest(special)
    assert sm.restarts[1] == 1 and sm.actors[1] is not victim
    assert torch.equal(after[0], before[0]) and torch.equal(after[1], before[1])
    assert _check_shards(sm, aug)[1]["answered"] == 1  # the new actor holds shard 1 again


@needs_ray
def test_a_killed_shard_without_retries_is_a_clear_error(freq, cluster):
    sm, _, special, _ = freq
    sm.nearest(special)
    cluster.kill(sm.actors[1])
    a, b = sm.bounds[1]
    with pytest.raises(ray_engine.ShardError, match=rf"shard 1 of 2 \(reference rows {a}\.\.{b - 1}\) died") as err:
        sm.nearest(special)
    assert err.value.shard == 1
    with pytest.raises(ray_engine.ShardError, match="shard 1"):  # and stays failed: no partial answer later
        sm.nearest(special)


def test_the_ray_engine_writes_the_local_engines_workspace(cluster, tmp_path):
    """`manifpt fingerprint --engine ray` on a small GM dataset: every entry byte-equal to the local engine's,
    the manifest equal but for times and the engine."""
    import json

    from fingerprint_core.cli import main
    from gmdata import make_gm_dataset

    data = make_gm_dataset(tmp_path / "data", channels=3, n_real=200, n_per_model=16, bad_file=False)
    local, sharded = tmp_path / "local", tmp_path / "ray"
    assert main(["fingerprint", str(data), "-w", str(local), "--spaces", "rgb,freq", "--device", "cpu", "-q"]) == 0
    assert main(["fingerprint", str(data), "-w", str(sharded), "--spaces", "rgb,freq", "--device", "cpu", "-q",
                 "--engine", "ray", "--shards", "3"]) == 0
    assert cluster.is_initialized()  # the module's instance is not the engine's to stop
    a, b = (json.loads((w / "workspace.json").read_text()) for w in (local, sharded))
    assert a["config"].pop("engine") == "local" and b["config"].pop("engine") == "ray"
    assert a["config"] == b["config"] and a["models"] == b["models"] and a["spaces"] == b["spaces"]
    for model, entry in a["models"].items():
        for space, e in entry["spaces"].items():
            for name in ("nearest.npy", "distance.npy", "artifacts.npy"):
                assert (local / e["dir"] / name).read_bytes() == (sharded / e["dir"] / name).read_bytes(), (model, space)


@needs_ray
def test_a_learned_space_embeds_on_ray_as_it_does_here(cluster, workspace, tmp_path):
    """SL through Ray Data: features within float32 tolerance of the local ones, the same nearest references."""
    from fingerprint_core import encoders
    from fingerprint_core.manifold import Manifold

    torch.manual_seed(0)
    cfg = encoders.EncoderConfig(in_channels=3, widths=(8, 16), feature_dim=24, num_outputs=4, image_size=16)
    weights = tmp_path / "sl.safetensors"
    encoders.save(encoders.ConvEncoder(cfg).eval(), weights)
    images = np.asarray(workspace.images(workspace.model_names()[0]))
    local = spaces.get("sl", device="cpu", weights=weights, batch_size=8)
    here = local.embed(images)
    there = ray_engine.ray_embed("sl", {"weights": weights}, images, 8)
    np.testing.assert_allclose(there.numpy(), here.numpy(), rtol=1e-5, atol=1e-6)  # the stated tolerance
    reference = local.embed(np.asarray(workspace.reference_images()))
    m = Manifold(reference, device="cpu")
    with ray_engine.ShardedManifold(reference, shards=2, device="cpu") as sm:
        assert torch.equal(sm.nearest(there)[0], m.nearest(there)[0])
