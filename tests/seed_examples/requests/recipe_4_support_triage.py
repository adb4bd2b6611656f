def triage_support_ticket(ticket_text, customer_id):
    """Classify and route support ticket."""
    
    # Step 1: Classify issue
    classify_agent = requests.post(f"{BASE_URL}/spawn", json={
        "model": "k2p5",
        "task": f"Classify this support ticket. Categories: bug_report, feature_request, billing_question, account_issue, technical_support. Also assign priority (low/medium/high/urgent) and estimate complexity (simple/moderate/complex).\n\nTicket: {ticket_text}",
        "priority": "high"
    }).json()
    
    classification = poll_for_completion(classify_agent["agent_id"])
    
    # Step 2: Generate suggested response
    response_agent = requests.post(f"{BASE_URL}/spawn", json={
        "model": "sonnet",
        "task": f"Draft a helpful response to this support ticket. If it's a common issue, provide solution steps. If complex, set expectations for follow-up.\n\nTicket: {ticket_text}\n\nClassification: {classification['result']}",
        "priority": "normal"
    }).json()
    
    response = poll_for_completion(response_agent["agent_id"])
    
    # Step 3: Route to appropriate team
    routing_rules = {
        "billing_question": "billing@company.com",
        "technical_support": "tech-support@company.com",
        "feature_request": "product@company.com",
        "bug_report": "engineering@company.com",
        "account_issue": "accounts@company.com"
    }
    
    category = extract_category(classification["result"])
    assigned_team = routing_rules.get(category, "support@company.com")
    
    return {
        "ticket_id": f"TICKET_{customer_id}_{int(time.time())}",
        "classification": classification["result"],
        "suggested_response": response["result"],
        "assigned_team": assigned_team,
        "auto_reply_sent": True
    }

def extract_category(classification_text):
    """Extract category from classification."""
    categories = ["bug_report", "feature_request", "billing_question", 
                  "account_issue", "technical_support"]
    for cat in categories:
        if cat in classification_text.lower():
            return cat
    return "general"
