#!/usr/bin/env python3
"""Validate ECS API inputs against botocore's bundled ECS service model, offline.

Usage: validate_ecs.py OPERATION FILE.json [OPERATION FILE.json ...]
  e.g. validate_ecs.py RegisterTaskDefinition deploy/ecs/task-definition.json \
                       CreateService deploy/ecs/service.json
Exit status: 0 if every input is valid, 1 otherwise. No AWS call, no credentials needed.

tests/tests/ecs.rs runs it on deploy/ecs/ with the botocore pinned in xtask/tools/python.txt
(the model changes with every botocore release). What the model cannot catch are the ECS
API's server-side rules (which capabilities it accepts, a desiredCount with DAEMON, ...).

botocore's ParamValidator checks required members, unknown keys, types and minimum
lengths/values. It does NOT check enum values (pidMode, schedulingStrategy, ...), so a
second pass below walks the same shapes and reports values outside a shape's enum.
"""
import json
import sys

import botocore
import botocore.session
from botocore.validate import ParamValidator


def enum_errors(params, shape, path=""):
    """Values not in their shape's enum (botocore's validator skips enums)."""
    errors = []
    kind = shape.type_name
    if kind == "structure" and isinstance(params, dict):
        for key, value in params.items():
            if key in shape.members:
                sub = f"{path}.{key}" if path else key
                errors += enum_errors(value, shape.members[key], sub)
    elif kind == "list" and isinstance(params, list):
        for i, value in enumerate(params):
            errors += enum_errors(value, shape.member, f"{path}[{i}]")
    elif kind == "map" and isinstance(params, dict):
        for key, value in params.items():
            errors += enum_errors(value, shape.value, f"{path}.{key}")
    elif kind == "string" and isinstance(params, str) and shape.enum:
        if params not in shape.enum:
            errors.append(f"Invalid value for parameter {path}: {params!r}, must be one of: {', '.join(shape.enum)}")
    return errors


def main(argv):
    model = botocore.session.get_session().get_service_model("ecs")
    print(f"botocore {botocore.__version__}, ecs api {model.api_version}")
    ok = True
    for op_name, path in zip(argv[1::2], argv[2::2]):
        with open(path) as f:
            params = json.load(f)
        shape = model.operation_model(op_name).input_shape
        report = ParamValidator().validate(params, shape)
        enums = enum_errors(params, shape)
        if report.has_errors() or enums:
            ok = False
            print(f"{op_name} {path}: INVALID")
            if report.has_errors():
                print(report.generate_report())
            for line in enums:
                print(line)
        else:
            print(f"{op_name} {path}: valid")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
