from moeplace.cli import app

app()
