"""What the tests and the benchmarks both need to run the service for real: free ports, a
fresh PostgreSQL database, a private redis-server, an SMTP sink (processes), a stand-in email
provider (provider), the Procfile's commands (procfile) and the service's processes (service)."""
