import pytest

from opdwatch.detector.synthetic_run import write_synthetic_run


@pytest.fixture(scope="session")
def collapsing_run(tmp_path_factory):
    """A recorded run whose rollouts start to loop around step 36 (precursors from ~30)."""
    return write_synthetic_run(tmp_path_factory.mktemp("runs") / "collapsing", steps=50, onset=36, seed=1)


@pytest.fixture(scope="session")
def stable_run(tmp_path_factory):
    return write_synthetic_run(tmp_path_factory.mktemp("runs") / "stable", steps=50, onset=None, seed=2)
