def analyze_ab_test(experiment_id):
    """Analyze A/B test and generate report."""
    
    # Get results from orchestrator
    results = requests.post(f"{BASE_URL}/orchestrator/experiment/results", json={
        "experiment_id": experiment_id
    }).json()
    
    if "error" in results:
        return {"error": results["error"]}
    
    # Generate analysis
    analysis_agent = requests.post(f"{BASE_URL}/spawn", json={
        "model": "opus",
        "task": f"Analyze these A/B test results and provide: 1) Executive summary, 2) Statistical significance assessment, 3) Recommendation (roll out / keep testing / stop), 4) Risks to consider.\n\nResults:\n{json.dumps(results, indent=2)}",
        "priority": "normal"
    }).json()
    
    analysis = poll_for_completion(analysis_agent["agent_id"])
    
    # Generate presentation summary
    summary_agent = requests.post(f"{BASE_URL}/spawn", json={
        "model": "sonnet",
        "task": f"Create a 3-slide presentation summary of these A/B test results:\n\n{analysis['result']}\n\nFormat: Slide 1 (Results), Slide 2 (Insights), Slide 3 (Recommendation)",
        "priority": "low"
    }).json()
    
    summary = poll_for_completion(summary_agent["agent_id"])
    
    return {
        "experiment_id": experiment_id,
        "raw_results": results,
        "analysis": analysis["result"],
        "presentation": summary["result"]
    }
