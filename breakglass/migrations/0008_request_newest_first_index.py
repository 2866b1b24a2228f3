from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("breakglass", "0007_sealed_credentials"),
    ]

    operations = [
        migrations.AddIndex(
            model_name="accessrequest",
            index=models.Index(
                fields=["-created_at", "-id"], name="request_newest_first"
            ),
        ),
    ]
