"""The example project's settings: one Postgres database, shared by the
ORM and durable (SHOP_DB_* from the environment)."""

import os

SECRET_KEY = os.environ.get("SHOP_SECRET_KEY", "example-only-not-secret")
DEBUG = False
ALLOWED_HOSTS = ["localhost", "127.0.0.1", "testserver"]
USE_TZ = True
ROOT_URLCONF = "examples.django_app.shop.urls"
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "durable.contrib.django",
    "examples.django_app.orders",
]
MIDDLEWARE: list[str] = []
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": os.environ.get("SHOP_DB_NAME", "shop"),
        "USER": os.environ.get("SHOP_DB_USER", "durable"),
        "PASSWORD": os.environ.get("SHOP_DB_PASSWORD", ""),
        "HOST": os.environ.get("SHOP_DB_HOST", "127.0.0.1"),
        "PORT": os.environ.get("SHOP_DB_PORT", "5432"),
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
# durable's system database is the one above; the broker comes from DURABLE_BROKER_URL
DURABLE = {"DATABASE": "default"}
