from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("breakglass", "0009_worker_heartbeat"),
    ]

    operations = [
        migrations.AddIndex(
            model_name="accessrequest",
            index=models.Index(
                fields=["-created_at", "-id"], name="request_newest_first"
            ),
        ),
    ]
