import os
import sys

if __name__ == "__main__":
    # Single quotes on purpose: detection must accept both quote styles.
    os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'config.settings.production')  # fmt: skip
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
