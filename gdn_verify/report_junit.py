"""JUnit XML of a run report, for CI systems that show test results (`gdn-verify report merge
--junit PATH`)."""

from __future__ import annotations

from gdn_verify.results import STATUS_ERROR, STATUS_NOT_SUPPORTED, RunResult


def junit_xml(result: RunResult) -> str:
    """JUnit XML of a run: one testcase per case (fail and changed: <failure>, error: <error>,
    not supported: <skipped>), plus one for the variant audit when it ran, and one error for
    an interrupted run's cases not run."""
    from xml.etree import ElementTree as ET

    t = result.totals
    suite_name = f"gdn-verify {result.suite} {result.impl}"
    cases = ET.Element("testsuite", name=suite_name)
    n_tests = n_failures = n_errors = n_skipped = 0
    total_time = 0.0
    for r in result.cases:
        seconds = float(r.timing.get("total_s", 0.0))
        total_time += seconds
        tc = ET.SubElement(cases, "testcase", classname=f"{result.suite}.{result.impl}", name=r.id,
                           time=f"{seconds:.3f}")
        n_tests += 1
        message = "; ".join(r.failures)
        if r.status == STATUS_NOT_SUPPORTED:
            ET.SubElement(tc, "skipped", message="not supported: " + "; ".join(r.not_supported))
            n_skipped += 1
        elif r.status == STATUS_ERROR:
            ET.SubElement(tc, "error", message=message, type="error").text = r.traceback or message
            n_errors += 1
        elif r.status != "pass":
            ET.SubElement(tc, "failure", message=message, type=r.status).text = message
            n_failures += 1
        if r.golden.status not in ("equal", "not checked"):
            ET.SubElement(tc, "system-out").text = f"golden {r.golden.status}: {r.golden.detail}"
    audit = result.variant_audit
    if audit is not None:
        tc = ET.SubElement(cases, "testcase", classname=f"{result.suite}.{result.impl}", name="variant-audit",
                           time="0.000")
        n_tests += 1
        if not audit.ran:
            ET.SubElement(tc, "skipped", message=audit.detail)
            n_skipped += 1
        elif not audit.passed:
            ET.SubElement(tc, "failure", message=audit.detail, type="variant-audit").text = audit.detail
            n_failures += 1
    selected = len(result.cases) if result.selected is None else result.selected
    if result.interrupted and selected > len(result.cases):
        tc = ET.SubElement(cases, "testcase", classname=f"{result.suite}.{result.impl}", name="not-run",
                           time="0.000")
        n_tests += 1
        text = f"interrupted: {selected - len(result.cases)} of {selected} cases not run"
        ET.SubElement(tc, "error", message=text, type="interrupted").text = text
        n_errors += 1
    cases.set("tests", str(n_tests))
    cases.set("failures", str(n_failures))
    cases.set("errors", str(n_errors))
    cases.set("skipped", str(n_skipped))
    cases.set("time", f"{result.wall_s:.3f}")
    props = ET.Element("properties")
    for name, value in (("backend", result.backend), ("device", result.device), ("passed", str(result.passed)),
                        ("cases", str(t["cases"]))):
        ET.SubElement(props, "property", name=name, value=value)
    cases.insert(0, props)
    root = ET.Element("testsuites", name="gdn-verify", tests=str(n_tests), failures=str(n_failures),
                      errors=str(n_errors), skipped=str(n_skipped), time=f"{result.wall_s:.3f}")
    root.append(cases)
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
