from django.apps import AppConfig


class OrdersConfig(AppConfig):
    name = "examples.django_app.orders"
    label = "orders"
