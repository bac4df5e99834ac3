from opdwatch.reader import open_run


def test_synthetic_run_is_a_real_recorded_run_whose_rollouts_start_to_loop(collapsing_run):
    run = open_run(collapsing_run)
    assert run.status == "finished"
    steps = run.steps("train").collect().sort("step")
    early, late = steps.filter(steps["step"] < 25), steps.filter(steps["step"] > 42)
    assert early["rollout/truncation_rate"].max() <= 0.1 and late["rollout/truncation_rate"].min() >= 0.5
    assert late["rollout/loop_rate"].mean() > 0.5  # loop onsets found by the recorder in the token ids
    assert late["token/repetitive_share"].mean() > early["token/repetitive_share"].mean() + 0.3
    rollouts = run.rollouts().collect()
    assert rollouts.filter(rollouts["loop_onset"].is_not_null()).height > 0


def test_stable_synthetic_run_does_not_loop(stable_run):
    steps = open_run(stable_run).steps("train").collect()
    assert steps["rollout/truncation_rate"].max() < 0.1
