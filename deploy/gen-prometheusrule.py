#!/usr/bin/env python3
"""Writes prometheus-operator/prometheusrule.yaml from prometheus/rules.yml.

The plain rules file is the source; the PrometheusRule embeds its `groups:`
block as text, comments included, so the two cannot say different things.

    python3 deploy/gen-prometheusrule.py           # write it
    python3 deploy/gen-prometheusrule.py --check   # exit 1 if it is stale
"""
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
SOURCE = HERE / "prometheus" / "rules.yml"
TARGET = HERE / "prometheus-operator" / "prometheusrule.yaml"

HEADER = """\
# GENERATED from deploy/prometheus/rules.yml by deploy/gen-prometheusrule.py:
# edit the rules there, then run the script. deploy/check.py fails when this
# file and the rules differ.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: tangle
  labels:
    app.kubernetes.io/name: tangle
    app.kubernetes.io/component: alert-rules
    # The label your Prometheus's ruleSelector wants (e.g. `release:
    # kube-prometheus-stack`) is added by a patch in your overlay, not here:
    # docs/kubernetes.md#with-the-prometheus-operator.
spec:
"""


def render() -> str:
    lines = SOURCE.read_text().splitlines()
    # Everything from `groups:` on, indented under `spec:`.
    start = next(i for i, l in enumerate(lines) if l.startswith("groups:"))
    body = ["  " + l if l.strip() else "" for l in lines[start:]]
    return HEADER + "\n".join(body) + "\n"


def main() -> int:
    text = render()
    if "--check" in sys.argv[1:]:
        if not TARGET.exists() or TARGET.read_text() != text:
            print(f"{TARGET.relative_to(HERE.parent)} is stale: run python3 deploy/gen-prometheusrule.py")
            return 1
        return 0
    TARGET.write_text(text)
    print(f"wrote {TARGET.relative_to(HERE.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
