# Python - requests.Session() is used internally
client = J1MSKYClient()  # Reuses connections automatically
