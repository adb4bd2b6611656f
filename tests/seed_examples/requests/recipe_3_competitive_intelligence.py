def monitor_competitor(url, competitor_name):
    """Monitor competitor website for changes."""
    
    # Step 1: Scrape and analyze
    research_agent = requests.post(f"{BASE_URL}/spawn", json={
        "model": "sonnet",
        "task": f"Analyze {url}. Extract: pricing, key features, messaging, target audience, recent changes. Format as structured report.",
        "priority": "normal"
    }).json()
    
    analysis = poll_for_completion(research_agent["agent_id"])
    
    # Step 2: Compare to our positioning
    comparison_agent = requests.post(f"{BASE_URL}/spawn", json={
        "model": "opus",
        "task": f"Compare this competitor analysis to J1MSKY. Identify: their strengths, their weaknesses, how we should position against them, recommended messaging.\n\nCompetitor analysis:\n{analysis['result']}",
        "priority": "normal"
    }).json()
    
    comparison = poll_for_completion(comparison_agent["agent_id"])
    
    # Store for historical tracking
    store_competitor_data(competitor_name, analysis["result"])
    
    return {
        "competitor": competitor_name,
        "analysis": analysis["result"],
        "positioning": comparison["result"]
    }

def store_competitor_data(name, data):
    """Store competitor snapshot for change detection."""
    import json
    from datetime import datetime
    
    snapshot = {
        "date": datetime.now().isoformat(),
        "data": data
    }
    
    # Compare to previous
    try:
        with open(f"competitors/{name}_latest.json") as f:
            previous = json.load(f)
        
        # Generate diff
        diff_agent = requests.post(f"{BASE_URL}/spawn", json={
            "model": "k2p5",
            "task": f"Compare these two competitor snapshots and identify what changed:\n\nPrevious:\n{previous['data']}\n\nCurrent:\n{data}",
            "priority": "normal"
        }).json()
        
        diff = poll_for_completion(diff_agent["agent_id"])
        
        if "no changes" not in diff["result"].lower():
            # Send alert
            requests.post(f"{BASE_URL}/webhooks", json={
                "url": "https://your-slack-webhook.com",
                "event": f"Competitor {name} has changes: {diff['result'][:200]}"
            })
    except FileNotFoundError:
        pass
    
    # Save current
    with open(f"competitors/{name}_latest.json", "w") as f:
        json.dump(snapshot, f)
