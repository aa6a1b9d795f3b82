"""The uplift report as one self-contained HTML page: a Jinja template with matplotlib charts as inline
SVG, so the file opens anywhere (mailed, archived, served) with no scripts and nothing to fetch."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

from reports.report import headline_text

CONTROL_COLOUR, ARM_COLOUR, GREY = "#8a94a6", "#2f6fd0", "#b8c0cc"


def render_html(report: Mapping[str, Any]) -> str:
    """The page for a report made by reports.report (campaign or experiment log)."""
    environment = Environment(
        loader=PackageLoader("reports", "templates"), autoescape=select_autoescape(["html", "j2"])
    )
    template = environment.get_template("report.html.j2")
    return template.render(
        r=report,
        headline=headline_text(report),
        charts=_charts(report),
        pct=_pct,
        money=_money,
        val=_value,
        lift=_lift,
        rel=_relative,
        fmt_p=_p,
        arm_names=[arm for arm in report.get("arms", {}) if arm != report.get("control")],
    )


# ---- charts ---------------------------------------------------------------------------------------


def _charts(report: Mapping[str, Any]) -> dict[str, Any]:
    import matplotlib

    matplotlib.use("Agg")  # no display: the report is rendered by servers and CI
    headline = (report.get("headline") or {}).get("outcome")
    return {
        "outcomes": _outcome_chart(report),
        "funnel": _funnel_chart(report["funnel"]) if report.get("funnel") else "",
        "segments": {
            column: _segment_chart(column, values, headline)
            for column, values in report.get("segments", {}).items()
            if headline
        },
        "qini": {
            arm: _qini_chart(arm, uplift)
            for arm, uplift in report.get("uplift", {}).items()
            if "learners" in uplift
        },
        "policy": _policy_chart(report["policy"]) if (report.get("policy") or {}).get("policies") else "",
    }


def _outcome_chart(report: Mapping[str, Any]) -> str:
    """Rates of the binary outcomes, control beside each arm, with 95 % intervals."""
    import matplotlib.pyplot as plt

    binary = {
        name: o
        for name, o in report["outcomes"].items()
        if o["kind"] == "binary"
        and not o.get("skipped")
        and not any(a.get("skipped") for a in o["arms"].values())
    }
    if not binary:
        return ""
    arms = list(next(iter(binary.values()))["arms"])
    groups = [report["control"], *arms]
    fig, ax = plt.subplots(figsize=(8, 3.4))
    width = 0.8 / len(groups)
    for g, group in enumerate(groups):
        means: list[float] = []
        errors: list[list[float]] = [[], []]
        for outcome in binary.values():
            numbers = outcome["control"] if g == 0 else outcome["arms"][group]
            mean, ci = numbers["mean"] or 0.0, numbers.get("ci") or [numbers["mean"], numbers["mean"]]
            means.append(100 * mean)
            errors[0].append(100 * max(mean - (ci[0] if ci[0] is not None else mean), 0))
            errors[1].append(100 * max((ci[1] if ci[1] is not None else mean) - mean, 0))
        xs = [i + (g - (len(groups) - 1) / 2) * width for i in range(len(binary))]
        colour = CONTROL_COLOUR if g == 0 else ARM_COLOUR
        ax.bar(xs, means, width, yerr=errors, capsize=3, label=group, color=colour, alpha=1 if g else 0.8)
    ax.set_xticks(range(len(binary)), list(binary))
    ax.set_ylabel("% of users")
    ax.set_title("Rates by arm (95 % intervals)")
    ax.legend(frameon=False)
    return _svg(fig)


def _funnel_chart(funnel: Mapping[str, Any]) -> str:
    import matplotlib.pyplot as plt

    steps = ["users", "reachable", "planned_sends", "sent", "delivered", "opened", "clicked", "converted"]
    counts = [funnel[s] for s in steps]
    fig, ax = plt.subplots(figsize=(8, 3.2))
    names = ["audience" if s == "users" else s.replace("_", " ") for s in steps]
    ax.barh(names[::-1], counts[::-1], color=ARM_COLOUR)
    for y, count in enumerate(counts[::-1]):
        ax.text(count, y, f" {count:,}", va="center", fontsize=9)
    ax.set_xlabel("users / messages")
    ax.set_title("Funnel")
    ax.set_xlim(0, max([*counts, 1]) * 1.15)
    return _svg(fig)


def _segment_chart(column: str, values: Mapping[str, Any], outcome: str) -> str:
    """Forest plot: the first arm's absolute lift on `outcome` in each segment value, with its interval."""
    import matplotlib.pyplot as plt

    rows = []
    for value, segment in values.items():
        numbers = segment.get("outcomes", {}).get(outcome)
        if not numbers or not numbers["arms"]:
            continue
        arm = next(iter(numbers["arms"].values()))
        ci = arm.get("lift_abs_ci")
        if arm.get("lift_abs") is None or not ci or None in ci:
            continue
        scale = 100 if numbers["kind"] == "binary" else 1
        rows.append((str(value), scale * arm["lift_abs"], [scale * c for c in ci], scale))
    if not rows:
        return ""
    fig, ax = plt.subplots(figsize=(7, 0.8 + 0.32 * len(rows)))
    for y, (_, lift, (lo, hi), _) in enumerate(rows):
        ax.plot([lo, hi], [y, y], color=ARM_COLOUR)
        ax.plot([lift], [y], "o", color=ARM_COLOUR)
    ax.axvline(0, color=GREY, linestyle="--")
    ax.set_ylim(-0.6, len(rows) - 0.4)
    ax.set_yticks(range(len(rows)), [r[0] for r in rows])
    ax.invert_yaxis()
    ax.set_xlabel(f"lift in {outcome}" + (" (percentage points)" if rows[0][3] == 100 else ""))
    ax.set_title(f"{outcome} lift by {column} (95 % intervals)")
    return _svg(fig)


def _qini_chart(arm: str, uplift: Mapping[str, Any]) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for name, learner in uplift["learners"].items():
        curve = learner["curve"]
        ax.plot(
            curve["fraction"],
            curve["qini"],
            label=f"{name.replace('_', '-')} ({learner['qini_coefficient']:.3f})",
        )
    random = uplift["random_curve"]
    ax.plot(random["fraction"], random["qini"], color=GREY, linestyle="--", label="random targeting")
    ax.set_xlabel("share of users targeted, by predicted uplift")
    ax.set_ylabel(f"incremental {uplift['outcome']}")
    ax.set_title(f"Qini curve, held-out users ({arm})")
    ax.legend(frameon=False, fontsize=8)
    return _svg(fig)


def _policy_chart(policy: Mapping[str, Any]) -> str:
    import matplotlib.pyplot as plt

    labels: list[str] = []
    values: list[float] = []
    errors: list[list[float]] = [[], []]
    for name, estimate in policy["policies"].items():
        for kind in ("ips", "snips", "dr"):
            numbers = estimate.get(kind)
            if not numbers:
                continue
            ci = numbers["ci"] or [numbers["value"], numbers["value"]]
            labels.append(f"{'model' if name == 'model' else 'random'}\n{kind.upper()}")
            values.append(100 * numbers["value"])
            errors[0].append(100 * max(numbers["value"] - ci[0], 0))
            errors[1].append(100 * max(ci[1] - numbers["value"], 0))
    fig, ax = plt.subplots(figsize=(7, 3.2))
    colours = [ARM_COLOUR if label.startswith("model") else CONTROL_COLOUR for label in labels]
    ax.bar(range(len(values)), values, yerr=errors, capsize=3, color=colours)
    ax.axhline(100 * policy["logged_value"], color=GREY, linestyle="--", label="logged")
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    ax.set_ylabel(f"{policy['outcome']} per message (%)")
    ax.set_title("Off-policy value (95 % intervals)")
    ax.legend(frameon=False)
    return _svg(fig)


def _svg(fig: Any) -> str:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg")
    plt.close(fig)
    text = buffer.getvalue()
    return text[text.index("<svg") :]  # drop the XML prolog and doctype: the SVG sits inside HTML


# ---- number formats (the template's filters) ------------------------------------------------------


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f} %"


def _money(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.2f}"


def _value(value: float | None, kind: str) -> str:
    if value is None:
        return "n/a"
    return _pct(value) if kind == "binary" else f"{value:,.3f}"


def _lift(value: float | None, ci: Sequence[float | None] | None, kind: str) -> str:
    if value is None:
        return "n/a"
    scale, unit, digits = (100, " pp", 2) if kind == "binary" else (1, "", 3)
    text = f"{scale * value:+.{digits}f}{unit}"
    if ci and ci[0] is not None and ci[1] is not None:
        text += f" ({scale * ci[0]:+.{digits}f} to {scale * ci[1]:+.{digits}f})"
    return text


def _relative(value: float | None, ci: Sequence[float | None] | None) -> str:
    if value is None:
        return "n/a"
    text = f"{100 * value:+.1f} %"
    if ci and ci[0] is not None and ci[1] is not None:
        text += f" ({100 * ci[0]:+.1f} to {100 * ci[1]:+.1f} %)"
    return text


def _p(value: float | None) -> str:
    if value is None:
        return "n/a"
    return "< 0.001" if value < 0.001 else f"{value:.3f}"
