import requests

print(requests.get("http://127.0.0.1:9", timeout=1).status_code)
