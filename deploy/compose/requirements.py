"""Print the requirements of ``pyproject.toml`` (core + the given extras), one per line.

Used by ``deploy/Dockerfile`` so the dependency wheels are a layer of their own, keyed by
pyproject.toml only: editing the sources does not download TensorFlow again.

    python3 deploy/compose/requirements.py pyproject.toml load,redis,kafka,triton
"""
import sys
import tomllib


def requirements(pyproject: str, extras: str) -> list[str]:
    with open(pyproject, "rb") as f:
        project = tomllib.load(f)["project"]
    out = list(project.get("dependencies", []))
    optional = project.get("optional-dependencies", {})
    for extra in filter(None, extras.split(",")):
        out += [r for r in optional[extra] if not r.startswith(project["name"] + "[")]
    return out


if __name__ == "__main__":
    print("\n".join(requirements(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "")))
