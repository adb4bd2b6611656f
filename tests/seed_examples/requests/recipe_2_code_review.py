def automated_code_review(code, language="python"):
    """Multi-stage code review with fixes."""
    
    # Step 1: Initial review
    review_agent = requests.post(f"{BASE_URL}/spawn", json={
        "model": "k2p5",
        "task": f"Review this {language} code for bugs, security issues, and style violations. List each issue with line numbers:\n\n```{language}\n{code}\n```",
        "priority": "normal"
    }).json()
    
    review = poll_for_completion(review_agent["agent_id"])
    
    # Step 2: Generate fixes
    fix_agent = requests.post(f"{BASE_URL}/spawn", json={
        "model": "k2p5",
        "task": f"Fix the issues identified in this code review. Return only the corrected code:\n\nOriginal code:\n{code}\n\nIssues to fix:\n{review['result']}",
        "priority": "normal"
    }).json()
    
    fixed = poll_for_completion(fix_agent["agent_id"])
    
    # Step 3: Security audit
    security_agent = requests.post(f"{BASE_URL}/spawn", json={
        "model": "sonnet",
        "task": f"Security audit of this code. Check for: injection vulnerabilities, exposed secrets, unsafe deserialization, path traversal:\n\n```{language}\n{fixed['result']}\n```",
        "priority": "high"
    }).json()
    
    security = poll_for_completion(security_agent["agent_id"])
    
    return {
        "original": code,
        "review": review["result"],
        "fixed_code": fixed["result"],
        "security_audit": security["result"],
        "total_cost": sum([
            review.get("cost", 0),
            fixed.get("cost", 0),
            security.get("cost", 0)
        ])
    }
