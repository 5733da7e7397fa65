"""ManiFPT Studio: the Streamlit front end (entrypoint: app/main.py)."""
