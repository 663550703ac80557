from django.urls import path

from shop import views

urlpatterns = [
    path("item/<int:item_id>", views.item),
    path("sleep", views.sleep),
    path("stats", views.stats),
    path("cid", views.cid),
    path("health", views.health),
]
