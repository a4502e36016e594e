"""Storage: SQLAlchemy 2 async models, the database handle, repositories and the recorder."""
