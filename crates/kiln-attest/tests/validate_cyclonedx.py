#!/usr/bin/env python3
"""Validate a CycloneDX 1.5 JSON document against the official schema.

Usage: validate_cyclonedx.py BOM.json

The schemas (bom-1.5 and the spdx and jsf schemas it references) are the
copies shipped in the cyclonedx-python-lib package, resolved offline.
Beyond the schema, checks that bom-refs are unique, that every dependency
names a known bom-ref, and that purls parse (packageurl-python).

Exit status: 0 valid, 1 invalid, 2 a needed Python package is missing.
"""
import json
import os
import sys

NEEDED = "pip install jsonschema cyclonedx-python-lib packageurl-python"

try:
    import jsonschema
    import cyclonedx.schema._res as schema_res
    from packageurl import PackageURL
except ImportError as e:  # pragma: no cover - environment problem
    print(f"missing Python package ({e}); install with: {NEEDED}", file=sys.stderr)
    sys.exit(2)

BASE = "http://cyclonedx.org/schema/"
SCHEMA_DIR = os.path.dirname(schema_res.__file__)
FILES = {
    "bom-1.5.SNAPSHOT.schema.json": "bom-1.5.schema.json",
    "spdx.SNAPSHOT.schema.json": "spdx.schema.json",
    "jsf-0.82.SNAPSHOT.schema.json": "jsf-0.82.schema.json",
}


def load_schemas():
    schemas = {}
    for file_name, canonical in FILES.items():
        path = os.path.join(SCHEMA_DIR, file_name)
        if not os.path.exists(path):
            print(f"{path} is missing: cyclonedx-python-lib too old? {NEEDED}", file=sys.stderr)
            sys.exit(2)
        with open(path, encoding="utf-8") as f:
            schema = json.load(f)
        # bom-1.5 refers to "spdx.SNAPSHOT.schema.json" relative to its $id;
        # register each schema under that name and under its own $id.
        schemas[BASE + file_name] = schema
        schemas[BASE + canonical] = schema
    return schemas


def make_validator(schemas):
    root = schemas[BASE + "bom-1.5.SNAPSHOT.schema.json"]
    cls = jsonschema.Draft7Validator
    try:
        from referencing import Registry, Resource
        from referencing.jsonschema import DRAFT7

        registry = Registry().with_resources(
            (uri, Resource.from_contents(s, default_specification=DRAFT7))
            for uri, s in schemas.items()
        )
        return cls(root, registry=registry, format_checker=cls.FORMAT_CHECKER)
    except ImportError:  # jsonschema < 4.18
        resolver = jsonschema.RefResolver(BASE + "bom-1.5.schema.json", root, store=schemas)
        return cls(root, resolver=resolver, format_checker=cls.FORMAT_CHECKER)


def semantic_errors(bom):
    errors = []
    refs = []
    meta = bom.get("metadata", {}).get("component")
    if meta and "bom-ref" in meta:
        refs.append(meta["bom-ref"])
    for c in bom.get("components", []):
        if "bom-ref" in c:
            refs.append(c["bom-ref"])
        purl = c.get("purl")
        if purl:
            try:
                parsed = PackageURL.from_string(purl)
            except ValueError as e:
                errors.append(f"component {c.get('name')}: bad purl {purl}: {e}")
                continue
            if parsed.name != c.get("name") or parsed.version != c.get("version"):
                errors.append(
                    f"purl {purl} decodes to {parsed.name}@{parsed.version}, "
                    f"not {c.get('name')}@{c.get('version')}"
                )
    dupes = sorted({r for r in refs if refs.count(r) > 1})
    if dupes:
        errors.append(f"duplicate bom-refs: {dupes}")
    known = set(refs)
    for d in bom.get("dependencies", []):
        for r in [d.get("ref")] + d.get("dependsOn", []):
            if r not in known:
                errors.append(f"dependency names unknown bom-ref {r}")
    return errors


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    with open(sys.argv[1], encoding="utf-8") as f:
        bom = json.load(f)
    validator = make_validator(load_schemas())
    errors = [
        f"{'/'.join(str(p) for p in e.absolute_path) or '(root)'}: {e.message}"
        for e in validator.iter_errors(bom)
    ]
    errors += semantic_errors(bom)
    if errors:
        print("INVALID CycloneDX 1.5 document:")
        for e in errors:
            print("  " + e)
        sys.exit(1)
    print(f"valid CycloneDX {bom.get('specVersion')} ({len(bom.get('components', []))} components)")


if __name__ == "__main__":
    main()
