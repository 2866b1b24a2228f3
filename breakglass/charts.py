"""Bar charts drawn on the server as inline SVG: no script, readable without one."""

import math

WIDTH = 720
HEIGHT = 240
# Room for the axis labels: left for counts, bottom for days.
LEFT, RIGHT, TOP, BOTTOM = 40, 10, 12, 28
MOST_DAY_LABELS = 8


def day_bars(days):
    """Return the geometry of a bar chart of counts per day.

    `days` is a list of {"day", "count"}; each bar carries its day and count so
    that the template can title it.
    """
    plot_width = WIDTH - LEFT - RIGHT
    plot_height = HEIGHT - TOP - BOTTOM
    top = max([row["count"] for row in days] + [1])
    slot = plot_width / max(len(days), 1)
    # Every nth day is labelled, so that labels never overlap.
    every = max(1, math.ceil(len(days) / MOST_DAY_LABELS))

    bars, labels = [], []
    for n, row in enumerate(days):
        height = plot_height * row["count"] / top
        x = LEFT + n * slot
        if row["count"]:
            bars.append(
                {
                    "day": row["day"],
                    "count": row["count"],
                    "x": _number(x + slot * 0.1),
                    "y": _number(TOP + plot_height - height),
                    "width": _number(max(slot * 0.8, 0.5)),
                    "height": _number(height),
                }
            )
        if n % every == 0:
            labels.append(
                {"x": _number(x + slot / 2), "text": row["day"].strftime("%m-%d")}
            )
    ticks = sorted({0, top, top // 2} if top >= 4 else {0, top})
    return {
        "width": WIDTH,
        "height": HEIGHT,
        "bars": bars,
        "day_labels": labels,
        "label_y": HEIGHT - 8,
        "axis_x": LEFT,
        "axis_right": WIDTH - RIGHT,
        "axis_y": TOP + plot_height,
        "ticks": [
            {
                "value": value,
                "y": _number(TOP + plot_height - plot_height * value / top),
                "text_y": _number(TOP + plot_height - plot_height * value / top + 4),
            }
            for value in ticks
        ],
        "tick_x": LEFT - 6,
        "total": sum(row["count"] for row in days),
        "busiest": max(days, key=lambda row: row["count"], default=None),
    }


def _number(value):
    return f"{value:.2f}".rstrip("0").rstrip(".")
