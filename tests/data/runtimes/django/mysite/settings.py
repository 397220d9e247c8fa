SECRET_KEY = "not-a-secret"
ROOT_URLCONF = "mysite.urls"
