#!/usr/bin/env python3
"""Validate an in-toto Statement v1 carrying SLSA provenance v1.

Usage: validate_provenance.py STATEMENT.json

Parses the statement and its predicate with the in-toto attestation
framework's own protobuf bindings (in-toto-attestation), which reject unknown
fields and malformed timestamps, runs the Statement's validate(), and checks
the fields SLSA provenance v1 requires.

Exit status: 0 valid, 1 invalid, 2 a needed Python package is missing.
"""
import json
import sys

NEEDED = "pip install in-toto-attestation"

try:
    from google.protobuf import json_format
    from in_toto_attestation.v1 import statement_pb2
    from in_toto_attestation.v1.statement import Statement
    from in_toto_attestation.v1.resource_descriptor import ResourceDescriptor
    from in_toto_attestation.predicates.provenance.v1 import provenance_pb2
except ImportError as e:  # pragma: no cover - environment problem
    print(f"missing Python package ({e}); install with: {NEEDED}", file=sys.stderr)
    sys.exit(2)

SLSA_V1 = "https://slsa.dev/provenance/v1"


def check(data):
    stmt_pb = json_format.Parse(data, statement_pb2.Statement())
    Statement.copy_from_pb(stmt_pb).validate()
    if stmt_pb.predicate_type != SLSA_V1:
        raise ValueError(f"predicateType is {stmt_pb.predicate_type!r}, not {SLSA_V1}")
    predicate = json.loads(data)["predicate"]
    prov = json_format.ParseDict(predicate, provenance_pb2.Provenance())
    bd, rd = prov.build_definition, prov.run_details
    if not bd.build_type:
        raise ValueError("buildDefinition.buildType is required")
    if not bd.HasField("external_parameters"):
        raise ValueError("buildDefinition.externalParameters is required")
    if not rd.builder.id:
        raise ValueError("runDetails.builder.id is required")
    for i, dep in enumerate(bd.resolved_dependencies):
        ResourceDescriptor.copy_from_pb(dep).validate()
        if not dep.digest:
            raise ValueError(f"resolvedDependencies[{i}] has no digest")
    if rd.metadata.finished_on.ToSeconds() < rd.metadata.started_on.ToSeconds():
        raise ValueError("finishedOn is before startedOn")
    return len(stmt_pb.subject), len(bd.resolved_dependencies)


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    with open(sys.argv[1], encoding="utf-8") as f:
        data = f.read()
    try:
        subjects, deps = check(data)
    except (ValueError, json_format.ParseError, KeyError) as e:
        print(f"INVALID SLSA provenance statement: {e}")
        sys.exit(1)
    print(f"valid in-toto Statement v1 / SLSA provenance v1 ({subjects} subjects, {deps} dependencies)")


if __name__ == "__main__":
    main()
