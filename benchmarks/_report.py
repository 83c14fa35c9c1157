"""What the end-to-end benchmark prints and writes: a line per step, the summary table,
the ratios, the JSON document and the plot."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from . import _cpu
from ._stats import StepResult

if TYPE_CHECKING:
    from .end_to_end import Plan, Ramp

__all__ = ["plot", "render", "render_ratios", "step_line", "summarize"]

CPU_GROUPS = (_cpu.FRONT_DOOR, _cpu.SHARDS, _cpu.POSTGRES, _cpu.PROCESSOR, _cpu.MAIL, _cpu.SMTP,
              _cpu.RAY, _cpu.LOADGEN)  # fmt: skip
COLORS = {"ceiling": "tab:green", "naive": "tab:orange", "payportal": "tab:blue"}


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.1f}" if value < 100 else f"{value:,.0f}"


def step_line(what: str, step: StepResult) -> str:
    errors = f" err {step.error_count}" if step.error_count else ""
    declined = f" declined {step.declined}" if step.declined else ""
    stop = f"  <- stop: {step.stop}" if step.stop else ""
    # The generator's own lateness (its event loop woke late): large values mean the
    # machine starved it, and the latencies include that.
    lag = f" late {step.send_lag_p99_ms:.0f} ms" if step.send_lag_p99_ms >= 10 else ""
    return (
        f"  {what} offered {step.offered_rate:9,.0f}/s achieved {step.achieved_rate:9,.0f}/s "
        f"p50 {_ms(step.p50_ms):>6} p99 {_ms(step.p99_ms):>6} ms conns {step.connections_max:3d}"
        f" loadgen {step.loadgen_cpu_pct:3.0f}%{lag}{declined}{errors}{stop}"
    )


def plan_json(plan: Plan) -> dict[str, Any]:
    document = dataclasses.asdict(plan)
    document["half_peak"] = sorted(plan.half_peak)
    return document


def ramp_json(ramp: Ramp) -> dict[str, Any]:
    peak = ramp.peak
    return {
        "workload": ramp.workload.name,
        "kind": ramp.workload.kind,
        "distribution": ramp.workload.distribution,
        "accounts": ramp.workload.accounts,
        "steps": [msgspec.to_builtins(s) for s in ramp.steps],
        "peak_step": None if peak is None else ramp.steps.index(peak),
        "limits_passed_by": ramp.first_stop,
        "ended_by": ramp.ended_by,
        "half_peak": None if ramp.half_peak is None else msgspec.to_builtins(ramp.half_peak),
    }


def _find(ramps: list[Ramp], pass_name: str, server: str, workload: str) -> Ramp | None:
    for ramp in ramps:
        if (ramp.pass_name, ramp.server, ramp.workload.name) == (pass_name, server, workload):
            return ramp
    return None


def _rate(step: StepResult | None) -> float | None:
    return None if step is None else step.achieved_rate


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or not b:
        return None
    return a / b


def _compare(name: str, a: Ramp | None, b: Ramp | None) -> dict[str, Any]:
    """``a`` over ``b``: their peaks within the limits, and their best steps at any latency
    (the only comparison left when a ramp had no step within the limits)."""
    a_peak, b_peak = _rate(a.peak if a else None), _rate(b.peak if b else None)
    a_best, b_best = _rate(a.best if a else None), _rate(b.best if b else None)
    return {"name": name, "kind": "ratio", "value": _ratio(a_peak, b_peak), "a": a_peak,
            "b": b_peak, "value_any_latency": _ratio(a_best, b_best), "a_any_latency": a_best,
            "b_any_latency": b_best}  # fmt: skip


def _cpu_per_payment(step: StepResult) -> dict[str, float]:
    if step.ok == 0:
        return {}
    return {g: round(1e6 * step.cpu_by_group_s.get(g, 0.0) / step.ok, 1) for g in CPU_GROUPS}


def summarize(results: dict[str, Any], ramps: list[Ramp], plan: Plan) -> dict[str, Any]:
    first = plan.passes[0].name
    summary: dict[str, Any] = {"peaks": [], "ratios": [], "cpu_us_per_payment_at_best": {}}
    for ramp in ramps:
        peak = ramp.peak
        last = ramp.steps[-1] if ramp.steps else None
        summary["peaks"].append({
            "pass": ramp.pass_name, "server": ramp.server, "workload": ramp.workload.name,
            "peak_rate": None if peak is None else round(peak.achieved_rate, 1),
            "max_achieved_rate": round(max((s.achieved_rate for s in ramp.steps), default=0), 1),
            "p50_ms_at_peak": None if peak is None else peak.p50_ms,
            "p99_ms_at_peak": None if peak is None else peak.p99_ms,
            "stop": ramp.first_stop or ramp.ended_by or (None if last is None else last.stop),
        })  # fmt: skip
    ratios: list[dict[str, Any]] = summary["ratios"]
    for pass_ in plan.passes:
        suffix = "" if pass_.name == first else f" ({pass_.name})"
        for workload in ("hot", "uniform", "zipf"):
            ours = _find(ramps, pass_.name, "payportal", workload)
            if ours is not None:
                ratios.append(_compare(f"{workload} payportal/naive{suffix}", ours,
                                       _find(ramps, pass_.name, "naive", workload)))  # fmt: skip
    shards = results.get("shards") or {}
    shard_rate = shards.get("median_rate")
    uniform = _find(ramps, first, "payportal", "uniform")
    ratios.append({
        "name": "payportal end-to-end / shard benchmark", "kind": "ratio",
        "value": _ratio(_rate(uniform.peak if uniform else None), shard_rate),
        "a": _rate(uniform.peak if uniform else None), "b": shard_rate,
        "value_any_latency": _ratio(_rate(uniform.best if uniform else None), shard_rate),
        "a_any_latency": _rate(uniform.best if uniform else None), "b_any_latency": shard_rate,
    })  # fmt: skip
    ratios.append(_compare("reads payportal/ceiling", _find(ramps, first, "payportal", "reads"),
                           _find(ramps, first, "ceiling", "reads")))  # fmt: skip
    for pass_ in plan.passes:
        suffix = "" if pass_.name == first else f" ({pass_.name})"
        ramp = _find(ramps, pass_.name, "payportal", "uniform")
        if ramp is not None and ramp.half_peak is not None:
            ratios.append({
                "name": f"p99 at half of payportal's uniform peak{suffix}", "kind": "ms",
                "value": ramp.half_peak.p99_ms, "offered": ramp.half_peak.offered_rate,
                "of": "its peak" if ramp.peak is not None else "its best step (no peak)",
                "errors": ramp.half_peak.error_count,
            })  # fmt: skip
    for entry in results["runs"]:
        if "idle_cpu_pct" in entry:
            summary["idle_cpu_pct"] = entry["idle_cpu_pct"]
    for server in ("ceiling", "naive", "payportal"):
        ramp = _find(ramps, first, server, "uniform")
        # The step that carried the most: at a low rate the per-payment figures are
        # mostly the idle cost (timers, polling) spread over few payments.
        step = None if ramp is None else ramp.best
        if step is not None and step.ok:
            summary["cpu_us_per_payment_at_best"][server] = {
                "achieved_rate": round(step.achieved_rate, 1),
                "within_limits": step.stop is None,
                **_cpu_per_payment(step),
            }
    steps = [s for r in ramps for s in r.steps]
    if steps:
        busiest = max(steps, key=lambda s: s.offered_rate)
        hungriest = max(steps, key=lambda s: s.loadgen_cpu_pct)
        summary["loadgen"] = {
            "highest_step_offered": round(busiest.offered_rate, 1),
            "cpu_pct_at_highest_step": round(busiest.loadgen_cpu_pct, 1),
            "max_cpu_pct": round(hungriest.loadgen_cpu_pct, 1),
            "max_cpu_pct_offered": round(hungriest.offered_rate, 1),
            "us_per_request_at_highest_step": round(
                1e6 * busiest.loadgen_cpu_s / max(1, busiest.scheduled + busiest.follow_ups), 1
            ),
            "send_lag_p99_ms_at_highest_step": round(busiest.send_lag_p99_ms, 2),
        }
    return summary


def render(results: dict[str, Any], ramps: list[Ramp], plan: Plan) -> str:
    summary = results["summary"]
    lines = [""]
    if plan.quick:
        lines += [f"NOTE: {note}" for note in plan.notes] + [""]
    limit = f"p99 ≤ {plan.p99_ms:.0f} ms (+ the processor's latency for payments)"
    lines.append(f"peak/s = the highest achieved rate of a step within the limits: {limit}, "
                 "no errors, ≥ 90 % of the offered rate achieved; max/s = the highest at any "
                 "latency.")  # fmt: skip
    header = (f"{'pass':18s} {'server':9s} {'workload':8s} {'peak/s':>9s} {'p50 ms':>7s} "
              f"{'p99 ms':>7s} {'max/s':>9s}  limits passed by")  # fmt: skip
    lines += [header, "-" * len(header)]
    for row in summary["peaks"]:
        peak = "none" if row["peak_rate"] is None else f"{row['peak_rate']:,.0f}"
        lines.append(
            f"{row['pass']:18s} {row['server']:9s} {row['workload']:8s} {peak:>9s} "
            f"{_ms(row['p50_ms_at_peak']):>7s} {_ms(row['p99_ms_at_peak']):>7s} "
            f"{row['max_achieved_rate']:>9,.0f}  {row['stop'] or '-'}"
        )
    cpu = summary["cpu_us_per_payment_at_best"]
    if cpu:
        servers = list(cpu)
        lines += ["", "CPU per succeeded payment, µs, at each server's highest achieved rate "
                  "in the uniform workload (first pass; the step's whole window):",
                  f"  {'':22s}" + "".join(f"{s:>12s}" for s in servers)]  # fmt: skip
        for group in CPU_GROUPS:
            values = [cpu[s].get(group, 0.0) for s in servers]
            if any(values):
                lines.append(f"  {group:22s}" + "".join(f"{v:12,.0f}" for v in values))
        totals = [sum(cpu[s].get(g, 0.0) for g in CPU_GROUPS) for s in servers]
        lines.append(f"  {'total':22s}" + "".join(f"{v:12,.0f}" for v in totals))
        # What a deployment runs itself: the processor and the SMTP server are elsewhere.
        elsewhere = (_cpu.PROCESSOR, _cpu.SMTP, _cpu.LOADGEN)
        own = [t - sum(cpu[s].get(g, 0.0) for g in elsewhere)
               for s, t in zip(servers, totals, strict=True)]
        lines.append(f"  {'own (no stand-ins)':22s}" + "".join(f"{v:12,.0f}" for v in own))
        lines.append(f"  {'at (payments/s)':22s}"
                     + "".join(f"{cpu[s]['achieved_rate']:12,.0f}" for s in servers))
        if "payportal" in cpu:
            lines.append("  (the SMTP catcher and the sandbox processor stand in for services a "
                         "deployment does not run; 'own' leaves them and the load generator out)")
    loadgen = summary.get("loadgen")
    if loadgen:
        lines += ["", (f"Load generator: {loadgen['cpu_pct_at_highest_step']:.0f}% of one core "
                       f"at its highest step ({loadgen['highest_step_offered']:,.0f}/s offered, "
                       f"{loadgen['us_per_request_at_highest_step']:.0f} µs a request); "
                       f"at most {loadgen['max_cpu_pct']:.0f}% "
                       f"(at {loadgen['max_cpu_pct_offered']:,.0f}/s).")]  # fmt: skip
    machine = results.get("machine", {})
    if "load_average_at_start" in machine:
        start, end = machine["load_average_at_start"], machine.get("load_average_at_end")
        lines.append(f"Machine: {machine['cores']} cores; 1-minute load average "
                     f"{start[0]:.1f} at the start, {end[0] if end else float('nan'):.1f} at "
                     "the end (other work on it slows every server alike, not evenly).")
    late = max((s.send_lag_p99_ms for r in ramps for s in r.steps), default=0.0)
    if late >= 50:
        lines.append(f"The load generator was up to {late:,.0f} ms late (p99 of a step) on its "
                     "own schedule: the machine starved it, and those latencies include it.")
    shards = results.get("shards")
    if shards:
        lines.append(f"Shard benchmark (PostgreSQL): median {shards['median_rate']:,.0f} "
                     f"durable payments/s over {len(shards['rates'])} rounds.")  # fmt: skip
    return "\n".join(lines)


def _rate_text(value: float | None) -> str:
    return "none" if value is None else f"{value:,.0f}/s"


def render_ratios(results: dict[str, Any]) -> str:
    summary = results["summary"]
    lines = ["", "Ratios (same run, same machine; peaks within the limits, then best steps at "
             "any latency):"]  # fmt: skip
    for entry in summary["ratios"]:
        name = entry["name"]
        if entry["kind"] == "ms":
            value = entry["value"]
            shown = "n/a" if value is None else f"{value:,.1f} ms"
            errors = f", {entry['errors']} errors" if entry["errors"] else ""
            lines.append(f"  {name:48s} {shown:>9s}  (offered {entry['offered']:,.0f}/s, half "
                         f"of {entry['of']}{errors})")  # fmt: skip
            continue
        value, any_latency = entry["value"], entry["value_any_latency"]
        shown = "n/a" if value is None else f"{value:.3f}"
        lines.append(
            f"  {name:48s} {shown:>9s}  ({_rate_text(entry['a'])} vs {_rate_text(entry['b'])})"
            + ("" if any_latency is None else
               f"; best steps {any_latency:.3f} ({_rate_text(entry['a_any_latency'])} vs "
               f"{_rate_text(entry['b_any_latency'])})")
        )  # fmt: skip
    idle = summary.get("idle_cpu_pct")
    if idle is not None:
        tree = sum(v for g, v in idle.items() if g != _cpu.POSTGRES)
        parts = ", ".join(f"{g} {v:.1f}%" for g, v in idle.items())
        lines.append(f"  {'idle CPU of payportal serve (its process tree)':48s} {tree:8.1f}%  "
                     f"of one core ({parts})")  # fmt: skip
    return "\n".join(lines)


def plot(ramps: list[Ramp], plan: Plan, path: Path) -> bool:
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(p, w) for p in plan.passes
              for w in ("uniform", "zipf", "hot", "reads")
              if any(r.pass_name == p.name and r.workload.name == w for r in ramps)]  # fmt: skip
    if not panels:
        return False
    figure, axes = plt.subplots(len(panels), 2, figsize=(12, 3.6 * len(panels)), squeeze=False)
    for row, (pass_, workload) in enumerate(panels):
        throughput, latency = axes[row]
        top = 1.0
        for ramp in ramps:
            if ramp.pass_name != pass_.name or ramp.workload.name != workload:
                continue
            color = COLORS.get(ramp.server, "gray")
            offered = [s.offered_rate for s in ramp.steps]
            top = max(top, *offered)
            throughput.plot(offered, [s.achieved_rate for s in ramp.steps], "o-", color=color,
                            label=ramp.server)  # fmt: skip
            latency.plot(offered, [s.p99_ms or float("nan") for s in ramp.steps], "o-",
                         color=color, label=f"{ramp.server} p99")  # fmt: skip
            latency.plot(offered, [s.p50_ms or float("nan") for s in ramp.steps], "x--",
                         color=color, alpha=0.6, label=f"{ramp.server} p50")  # fmt: skip
        throughput.plot([1, top], [1, top], ":", color="gray", linewidth=0.8)
        floor = pass_.latency_ms if workload != "reads" else 0
        latency.axhline(plan.p99_ms + floor, color="red", linewidth=0.8, linestyle=":")
        title = f"{workload} — {pass_.name}"
        throughput.set_title(f"{title}: achieved vs offered")
        latency.set_title(f"{title}: latency from scheduled send")
        for ax in (throughput, latency):
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("offered, requests/s")
            ax.grid(True, which="both", alpha=0.3)
        throughput.set_ylabel("achieved, succeeded/s")
        latency.set_ylabel("ms")
        throughput.legend(fontsize=8)
        latency.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return True
