from fastapi import FastAPI

api = FastAPI(title="api")


@api.get("/")
def index() -> dict[str, str]:
    return {"hello": "world"}
