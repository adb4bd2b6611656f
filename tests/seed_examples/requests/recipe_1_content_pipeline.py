import requests
import time

BASE_URL = "http://localhost:8080/api"

def content_pipeline(topic):
    """End-to-end content creation pipeline."""
    
    # Step 1: Research
    research_agent = requests.post(f"{BASE_URL}/spawn", json={
        "model": "sonnet",
        "task": f"Research: {topic}. Find 5 key insights, 3 statistics, and 2 expert quotes.",
        "priority": "normal"
    }).json()
    
    research = poll_for_completion(research_agent["agent_id"])
    
    # Step 2: Outline
    outline_agent = requests.post(f"{BASE_URL}/spawn", json={
        "model": "k2p5",
        "task": f"Create blog outline based on this research:\n{research['result']}\n\nInclude: intro, 5 sections, conclusion",
        "priority": "normal"
    }).json()
    
    outline = poll_for_completion(outline_agent["agent_id"])
    
    # Step 3: Write article
    writer_agent = requests.post(f"{BASE_URL}/spawn", json={
        "model": "sonnet",
        "task": f"Write 800-word blog post about '{topic}' following this outline:\n{outline['result']}\n\nTone: Professional but conversational. Include a compelling headline.",
        "priority": "normal"
    }).json()
    
    article = poll_for_completion(writer_agent["agent_id"])
    
    # Step 4: Edit
    editor_agent = requests.post(f"{BASE_URL}/spawn", json={
        "model": "opus",
        "task": f"Edit this blog post for clarity, flow, and SEO. Add meta description:\n\n{article['result']}",
        "priority": "normal"
    }).json()
    
    final_article = poll_for_completion(editor_agent["agent_id"])
    
    # Step 5: Social snippets
    social_agent = requests.post(f"{BASE_URL}/spawn", json={
        "model": "sonnet",
        "task": f"Create 3 tweet-length snippets and 1 LinkedIn post from this article:\n{final_article['result']}",
        "priority": "low"
    }).json()
    
    social = poll_for_completion(social_agent["agent_id"])
    
    return {
        "research": research["result"],
        "outline": outline["result"],
        "article": final_article["result"],
        "social": social["result"],
        "total_cost": sum([
            research.get("cost", 0),
            outline.get("cost", 0),
            article.get("cost", 0),
            final_article.get("cost", 0),
            social.get("cost", 0)
        ])
    }

def poll_for_completion(agent_id, timeout=300):
    """Poll until agent completes."""
    start = time.time()
    while time.time() - start < timeout:
        status = requests.get(f"{BASE_URL}/agent/{agent_id}").json()
        if status.get("status") == "completed":
            return status
        elif status.get("status") == "failed":
            raise Exception(f"Agent failed: {status.get('error')}")
        time.sleep(2)
    raise TimeoutError("Agent didn't complete in time")

# Usage
result = content_pipeline("AI Automation in Marketing")
print(f"Article:\n{result['article']}")
print(f"\nSocial posts:\n{result['social']}")
print(f"\nTotal cost: ${result['total_cost']:.4f}")
