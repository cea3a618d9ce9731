"""roost doctor: the machine, the engines, and the self-test."""

from __future__ import annotations

import json
import sys

from roost.errors import RoostError


def cmd_doctor(args) -> int:
    from roost import report
    from roost.machine import bandwidth, doctor, hardware

    if args.measure:
        gbs = bandwidth.measure(hardware.default_threads())
        where = bandwidth.save_measured(gbs, hardware.Probe().cpu()["model"])
        print(f"measured CPU memory bandwidth: {gbs:.1f} GB/s (kept in {where})", file=sys.stderr)
    tested = doctor.self_test(fresh=args.self_test)  # kept per build: it runs once for each
    if args.self_test:
        if not tested.ok:
            raise RoostError(tested.line())
        print(tested.line())
        return 0
    machine, cuda_toolkit = doctor.here()
    data = doctor.report(machine, cuda_toolkit, tested)
    print(json.dumps(data, indent=2) if args.json else report.doctor(data, machine))
    return 0
