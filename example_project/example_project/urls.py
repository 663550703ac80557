from django.urls import path

from shop import async_views, txviews, views

urlpatterns = [
    path("item/<int:item_id>", views.item),
    path("sleep", views.sleep),
    path("stats", views.stats),
    path("cid", views.cid),
    path("health", views.health),
    path("tx/query-wait-query", txviews.query_wait_query),  # bench/txmode.py
    # Async views (the ORM's async API): served under ASGI (example_project.asgi); under WSGI
    # Django runs them in an event loop of their own per request.
    path("async/item/<int:item_id>", async_views.item),
    path("async/count", async_views.count),
    path("async/items", async_views.first_items),
    path("async/bump/<int:item_id>", async_views.bump),
    path("async/sleep", async_views.sleep),
    path("async/cid", async_views.cid),
    path("async/tx/query-wait-query", txviews.async_query_wait_query),  # bench/asgi.py
]
