def batch_process_data(data_items, task_template, batch_size=10):
    """Process data items in parallel batches."""
    
    results = []
    batches = [data_items[i:i+batch_size] for i in range(0, len(data_items), batch_size)]
    
    for batch_idx, batch in enumerate(batches):
        print(f"Processing batch {batch_idx + 1}/{len(batches)}...")
        
        # Spawn agents for each item in batch
        agent_ids = []
        for item in batch:
            task = task_template.format(item=item)
            agent = requests.post(f"{BASE_URL}/spawn", json={
                "model": "k2p5",
                "task": task,
                "priority": "normal"
            }).json()
            agent_ids.append(agent["agent_id"])
        
        # Wait for all to complete
        for agent_id in agent_ids:
            result = poll_for_completion(agent_id, timeout=600)
            results.append(result)
    
    # Aggregate results
    aggregate_agent = requests.post(f"{BASE_URL}/spawn", json={
        "model": "opus",
        "task": f"Aggregate and summarize these {len(results)} results. Identify patterns, outliers, and key insights.\n\n" + "\n---\n".join([r["result"] for r in results]),
        "priority": "normal"
    }).json()
    
    summary = poll_for_completion(aggregate_agent["agent_id"])
    
    return {
        "individual_results": results,
        "summary": summary["result"],
        "total_cost": sum(r.get("cost", 0) for r in results) + summary.get("cost", 0)
    }

# Usage
data = ["item1", "item2", "item3", ...]  # 100 items
template = "Analyze this data item and extract key metrics: {item}"
results = batch_process_data(data, template, batch_size=10)
