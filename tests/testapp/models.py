from django.db import models


class Row(models.Model):
    value = models.IntegerField(default=0)
    note = models.CharField(max_length=100, default="")

    class Meta:
        app_label = "testapp"
