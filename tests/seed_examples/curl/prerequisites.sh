# Set your API endpoint
export J1MSKY_API="http://localhost:8080/api"

# Set your API key (if authentication enabled)
export J1MSKY_KEY="your_api_key_here"
