"""abtest: the online A/B test of the treatment against the control, and the canary decision.

The online A/B job (`crops.abtest.simulate.run_abtest`): simulated users of the world search
through the control and the treatment over real HTTP, one sequential look per simulated day,
and the canary policy decides promote, hold or rollback.

- On a cluster (`target=cluster`) the arms are the two predictors the InferenceService serves,
  by the URLs the `deploy` task returns (`control_url`: its default predictor,
  `treatment_url`: its canary); the task never serves copies of its own, so the decision it
  applies concerns the predictors it measured. Without both URLs it fails before any traffic.
- Locally an arm is a KServe v1 URL when `control_url` / `treatment_url` is given, else the
  model and its index served by a `crops serve` subprocess for the test's duration.
- When `deploy` held the candidate (`deploy_decision=hold`, the offline gate), no traffic is
  sent and nothing is applied: `ab_report.json` and `report.md` record a hold with deploy's
  reason.

With `apply`, the decision is applied to the InferenceService (`apply_decision`): promote makes
the canary the only predictor, rollback sends all traffic back to the previous one and drops
the canary, hold leaves it. With no canary, promote and rollback change nothing and are
recorded as no-ops (`applied.noop`, and a last reason), not failures.
"""

from typing import Optional

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Markdown, Metrics, Model, Output

from crops.components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def abtest(
    world: Input[Dataset],
    control_model: Input[Model],
    control_index: Input[Artifact],
    treatment_model: Input[Model],
    treatment_index: Input[Artifact],
    metrics: Output[Metrics],
    report: Output[Markdown],
    results: Output[Artifact],
    target: str = "local",
    control_url: str = "",
    treatment_url: str = "",
    deploy_decision: str = "",
    deploy_reason: str = "",
    treatment_share: float = 0.5,
    users: int = 0,
    days: int = -1,
    searches_per_user: Optional[float] = None,  # noqa: UP045
    seed: int = -1,
    primary: Optional[str] = None,  # noqa: UP045
    alpha: Optional[float] = None,  # noqa: UP045
    min_users_per_arm: int = -1,
    max_error_rate: Optional[float] = None,  # noqa: UP045
    max_p99_ms: Optional[float] = None,  # noqa: UP045
    timeout_s: Optional[float] = None,  # noqa: UP045
    concurrency: int = -1,
    apply: bool = False,
    isvc: str = "crops",
    namespace: str = "crops",
    mode: str = "auto",
) -> str:
    """Simulated users of the world search through the two arms; a promote, hold or rollback.

    On a cluster (target `cluster`) the arms are the two predictors the InferenceService
    serves, by the URLs the deploy task returns: its default predictor (control) and its
    canary (treatment); the task never serves copies of its own, so the decision it applies
    concerns the predictors it measured. Locally an arm is a KServe v1 URL when its `*_url` is
    given, else the model with its index, served by a `crops serve` subprocess for the test's
    duration (`crops.abtest.simulate.run_abtest`: the users' logs, then the analysis of
    them, look by look). When the deploy task held (`deploy_decision`
    `hold`: the offline table showed the candidate worse), no traffic is sent, nothing is
    applied, and the decision is hold with deploy's reason. With `apply`, the decision is
    applied to the InferenceService (`apply_decision`: promote makes the canary the only
    predictor, rollback drops it, hold leaves it; with no canary, promote and rollback are
    recorded no-ops).

    Args:
        world: a simulated world.
        control_model: the control (the click-only model), served unless control_url is set.
        control_index: its index folder.
        treatment_model: the treatment (CroPS), served unless treatment_url is set.
        treatment_index: its index folder.
        metrics: per metric the arms' values, lift and p-value; the decision (promote 1,
            hold 0, rollback -1), the looks run and the users per arm.
        report: report.md.
        results: the report folder: ab_report.json, report.md, the plots, the logs (logs/) and
            the ledger (ledger/).
        target: local | cluster (the arms must then be URLs).
        control_url: the control's KServe v1 URL (on a cluster the InferenceService's default
            predictor, from deploy); empty, locally: serve control_model.
        treatment_url: the treatment's KServe v1 URL (on a cluster its canary, from deploy);
            empty, locally: serve treatment_model.
        deploy_decision: the deploy task's decision; `hold`: no test, hold.
        deploy_reason: its reason, recorded with a hold.
        treatment_share: users in treatment, 0 < s < 1.
        users: a seeded sample of the world's users; 0: all.
        days: simulated days, one sequential look after each; -1: AbTestConfig's
            (`crops.abtest.simulate`; the policy's settings, -1 or unset: CanaryPolicy's).
        searches_per_user: mean searches per user a day.
        seed: traffic seed (same seed, same report); -1: AbTestConfig's.
        primary: ctr | long_play_rate | reformulation_rate.
        alpha: two-sided level over all looks.
        min_users_per_arm: no promotion below this; -1: CanaryPolicy's.
        max_error_rate: treatment guardrail: errors and timeouts per request.
        max_p99_ms: treatment guardrail: p99 latency.
        timeout_s: per-request endpoint timeout.
        concurrency: requests in flight per arm; -1: AbTestConfig's.
        apply: patch the InferenceService's canary traffic with the decision.
        isvc: the InferenceService (apply).
        namespace: its namespace (apply).
        mode: its canary mechanism: Standard | Serverless | auto (read off the object).

    Returns:
        The decision: promote, hold or rollback.
    """
    import json
    import shutil
    from pathlib import Path

    from crops.abtest.report import held_report, write_report
    from crops.abtest.simulate import AbTestConfig, run_abtest
    from crops.evaluate.sequential import CanaryPolicy
    from crops.k8s.rollout import apply_decision

    if target not in ("local", "cluster"):
        raise ValueError(f"target {target!r}: use local or cluster")
    if deploy_decision not in ("", "canary", "hold"):
        raise ValueError(f"deploy_decision {deploy_decision!r}: use canary or hold")
    held = deploy_decision == "hold"
    if target == "cluster" and not held and not (control_url and treatment_url):
        raise ValueError(
            "on a cluster the A/B test measures the two predictors the InferenceService "
            "serves: give control_url and treatment_url (the deploy task's outputs)"
        )
    # unset parameters keep AbTestConfig's and CanaryPolicy's defaults (their one home)
    runs = {
        "days": days,
        "searches_per_user": searches_per_user,
        "seed": seed,
        "timeout_s": timeout_s,
        "concurrency": concurrency,
    }
    runs = {k: v for k, v in runs.items() if v not in (None, -1)}
    days = runs.get("days", AbTestConfig.model_fields["days"].default)
    rules = {
        "primary": primary,
        "alpha": alpha,
        "min_users_per_arm": min_users_per_arm,
        "max_error_rate": max_error_rate,
        "max_p99_ms": max_p99_ms,
    }
    policy = CanaryPolicy(looks=days, **{k: v for k, v in rules.items() if v not in (None, -1)})
    if held:  # the offline gate held the candidate back: nothing deployed, nothing to measure
        rep = held_report(deploy_reason or "the deploy task held the candidate", days, policy)
        out = Path(results.path)
        write_report(rep, out)
        shutil.copy2(out / "report.md", report.path)
        metrics.log_metric("decision", 0)
        metrics.log_metric("looks_run", 0)
        results.metadata.update(
            {
                "decision": "hold",
                "reasons": rep["decision"]["reasons"],
                "looks_run": 0,
                "held_by": "deploy",
                "applied": "nothing: the deploy task held the candidate",
            }
        )
        return "hold"
    cfg = AbTestConfig(
        world=world.path,
        control=control_url or control_model.path,
        treatment=treatment_url or treatment_model.path,
        control_index=None if control_url else control_index.path,
        treatment_index=None if treatment_url else treatment_index.path,
        treatment_share=treatment_share,
        users=users or None,
        policy=policy,
        **runs,
        out=results.path,
    )
    rep = run_abtest(cfg)
    shutil.copy2(Path(results.path) / "report.md", report.path)

    decision = rep["decision"]
    action = decision["action"]
    metrics.log_metric("decision", {"promote": 1, "hold": 0, "rollback": -1}[action])
    metrics.log_metric("looks_run", rep["looks_run"])
    analysis = rep["analysis"]
    for arm in ("control", "treatment"):
        metrics.log_metric(f"{arm}_users", analysis["arms"][arm]["users"])
    for name, lift in analysis["metrics"].items():
        for key in ("control", "treatment", "lift", "p_value"):
            if isinstance(lift.get(key), int | float):
                metrics.log_metric(f"{name}_{key}", lift[key])
    results.metadata.update(
        {"decision": action, "reasons": decision["reasons"], "looks_run": rep["looks_run"]}
    )
    if apply:
        applied = apply_decision(decision, isvc=isvc, namespace=namespace, mode=mode)
        results.metadata["applied"] = json.loads(json.dumps(applied, default=str))
        if applied.get("noop"):  # promote or rollback with no canary: recorded, not a failure
            results.metadata["reasons"] = [*decision["reasons"], applied["noop"]]
    return action
