"""Builds the `labwright` package, generating its gRPC stubs (`labwright/v1/*_pb2*.py`) from
the repository's `protos/proto/labwright/v1/*.proto` with grpcio-tools first, so the client
always speaks the API the runtime serves."""

import pathlib

from setuptools import setup

HERE = pathlib.Path(__file__).resolve().parent
PROTOS = HERE.parent.parent / "protos" / "proto"
OUT = HERE / "labwright" / "v1"


def generate_stubs() -> None:
    from grpc_tools import protoc
    import grpc_tools

    protos = sorted(str(p.relative_to(PROTOS)) for p in (PROTOS / "labwright" / "v1").glob("*.proto"))
    if not protos:
        if (OUT / "runs_pb2.py").exists():
            return  # an sdist: the stubs came with it
        raise SystemExit(f"no .proto files under {PROTOS}: build the client from a Labwright checkout")
    include = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    args = ["protoc", f"-I{PROTOS}", f"-I{include}", f"--python_out={HERE}", f"--grpc_python_out={HERE}", *protos]
    if protoc.main(args) != 0:
        raise SystemExit("grpc_tools.protoc failed on " + ", ".join(protos))
    (OUT / "__init__.py").touch()


generate_stubs()
setup()
