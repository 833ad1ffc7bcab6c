import numpy as np
import pytest
import yaml

from conftest import first_layers
from moeplace.atomic import atomic_path
from moeplace.errors import MoeplaceError
from moeplace.planner.placement import load_placement, save_placement
from moeplace.planner.plan import plan
from moeplace.planner.solvers import DEFAULT_SOLVERS, SolverOptions
from moeplace.planner.topology import Topology

CALIBRATION = {"fingerprint": "sha256:test", "tokens": 1, "documents": 1}


@pytest.fixture(scope="module")
def placement(real_stats):
    return plan(real_stats, Topology(32, 4), "greedy-capped", SolverOptions(load_tolerance=0.1), CALIBRATION)


@pytest.mark.slow
def test_round_trip(tmp_path, placement):
    save_placement(placement, tmp_path / "p.yaml")
    loaded = load_placement(tmp_path / "p.yaml")
    np.testing.assert_array_equal(loaded.expert_to_device, placement.expert_to_device)
    np.testing.assert_array_equal(loaded.calibration_load, placement.calibration_load)
    assert loaded.layer_ids == tuple(range(24))
    assert (loaded.model, loaded.num_devices, loaded.solver) == ("openai/gpt-oss-20b", 4, "greedy-capped")
    assert loaded.layers[0].solver_report == placement.layers[0].solver_report
    save_placement(loaded, tmp_path / "again.yaml")
    assert (tmp_path / "again.yaml").read_bytes() == (tmp_path / "p.yaml").read_bytes()


@pytest.mark.slow
@pytest.mark.parametrize("solver", DEFAULT_SOLVERS)  # exact: in test_exact_search, on small layers
def test_same_inputs_and_seed_give_the_same_file(tmp_path, real_stats, solver):
    options = SolverOptions(load_tolerance=0.1, seed=3, time_limit=0.2, search_steps=50)
    stats = first_layers(real_stats, 4)
    for name in ("a.yaml", "b.yaml"):
        save_placement(plan(stats, Topology(32, 8), solver, options, CALIBRATION), tmp_path / name)
    assert (tmp_path / "a.yaml").read_bytes() == (tmp_path / "b.yaml").read_bytes()


def test_file_is_readable_yaml_with_one_line_maps(tmp_path, placement):
    save_placement(placement, tmp_path / "p.yaml")
    text = (tmp_path / "p.yaml").read_text()
    assert text.startswith("format: moeplace-placement\nversion: 1\n")
    assert "  expert_to_device: [" in text


def edit(tmp_path, placement, change):
    save_placement(placement, tmp_path / "p.yaml")
    doc = yaml.safe_load((tmp_path / "p.yaml").read_text())
    change(doc)
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(doc))
    return tmp_path / "p.yaml"


def _swap_to_duplicate(doc):
    row = doc["layers"][0]["expert_to_device"]
    row[0] = (row[0] + 1) % doc["num_devices"]  # one device one expert short, another one over


@pytest.mark.slow
@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(version=2), "schema version 2"),
        (lambda d: d.pop("num_devices"), "num_devices"),
        (lambda d: d.update(num_devices=3), "divide"),
        (lambda d: d["layers"][0]["expert_to_device"].pop(), "31 entries"),
        (lambda d: d["layers"][0]["expert_to_device"].__setitem__(0, 9), "outside"),
        (_swap_to_duplicate, "holds"),
        (lambda d: d["layers"][1].update(layer=0), "repeat"),
        (lambda d: d["layers"][0].update(expert_to_device="0,1"), "list of integers"),
        (lambda d: d["layers"][0]["calibration_load"].__setitem__(0, -1), "non-negative"),
        (lambda d: d.update(layers=[]), "no layers"),
        (lambda d: d.update(format="other"), "not a moeplace-placement"),
    ],
)
def test_bad_placement_files_are_refused(tmp_path, placement, change, message):
    path = edit(tmp_path, placement, change)
    with pytest.raises(MoeplaceError, match=message) as info:
        load_placement(path)
    assert str(path) in str(info.value)


def test_unsafe_or_broken_yaml_is_refused(tmp_path):
    (tmp_path / "evil.yaml").write_text("!!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(MoeplaceError, match="not valid YAML"):
        load_placement(tmp_path / "evil.yaml")
    (tmp_path / "broken.yaml").write_text("format: [unclosed\n")
    with pytest.raises(MoeplaceError, match="not valid YAML"):
        load_placement(tmp_path / "broken.yaml")
    with pytest.raises(MoeplaceError, match="no such file"):
        load_placement(tmp_path / "missing.yaml")


def test_failed_write_leaves_the_previous_file(tmp_path, placement):
    target = tmp_path / "p.yaml"
    save_placement(placement, target)
    before = target.read_bytes()
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half a placem")
        raise RuntimeError("killed mid-write")
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["p.yaml"]
