"""The application's database: schema, engine, migrations and a repository per aggregate."""
